"""Embeddings on the Unified API (`/compat/embeddings`): OpenAI's format in, any provider out.

OpenAI-format upstreams (OpenAI and the compatible family) take the request as it is, with only
`model` rewritten. Gemini takes `batchEmbedContents`, translated here both ways. Anthropic has
no embeddings API, so such a request is a 400 that says so. Pure: no I/O.

Gemini's `batchEmbedContents` reports no token usage; the OpenAI response then carries an
estimate (a quarter of the characters, rounded up), the same rule the price estimate uses.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from tollgate.errors import InvalidRequest
from tollgate.providers.base import UpstreamCall

JSON = dict[str, Any]


def embedding_inputs(payload: JSON) -> list[str]:
    """The texts to embed, from OpenAI's `input` (a string or a list of strings)."""
    value = payload.get("input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidRequest(
            "input must be a non-empty string or a non-empty list of strings "
            "(token-id arrays are only accepted by OpenAI-format providers).",
            param="input",
        )
    return texts


def gemini_embeddings_call(model: str, payload: JSON) -> UpstreamCall:
    dimensions = payload.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or dimensions < 1):
        raise InvalidRequest("dimensions must be a positive integer", param="dimensions")
    requests = []
    for text in embedding_inputs(payload):
        item: JSON = {"model": f"models/{model}", "content": {"parts": [{"text": text}]}}
        if dimensions is not None:
            item["outputDimensionality"] = dimensions
        requests.append(item)
    return UpstreamCall(
        method="POST",
        path=f"v1beta/models/{model}:batchEmbedContents",
        body=orjson.dumps({"requests": requests}),
    )


def openai_embeddings_from_gemini(model: str, payload: JSON, body: bytes) -> tuple[JSON, bool]:
    """The OpenAI embeddings answer, and whether its token count is an estimate: Gemini's
    batch answer usually reports no usage, so the count is then a quarter of the characters."""
    parsed = orjson.loads(body)
    vectors = [item.get("values", []) for item in parsed.get("embeddings", [])]
    reported = parsed.get("usageMetadata", {}).get("promptTokenCount")
    tokens = (
        reported
        if isinstance(reported, int)
        else sum(math.ceil(len(text) / 4) for text in embedding_inputs(payload))
    )
    answer = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": vector}
            for index, vector in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return answer, not isinstance(reported, int)
