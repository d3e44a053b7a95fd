"""Gemini's batch embeddings answer as OpenAI's, and whether its token count was measured: a
count the provider did not report is the gateway's estimate, and the charge says so."""

from __future__ import annotations

import orjson

from tollgate.embeddings import openai_embeddings_from_gemini

PAYLOAD = {"model": "gemini-embedding-001", "input": ["abcdefgh", "abc"]}
VECTORS = {"embeddings": [{"values": [0.1, 0.2]}, {"values": [0.3, 0.4]}]}


def test_a_reported_count_is_measured() -> None:
    body = orjson.dumps({**VECTORS, "usageMetadata": {"promptTokenCount": 7}})
    answer, estimated = openai_embeddings_from_gemini("gemini-embedding-001", PAYLOAD, body)
    assert estimated is False
    assert answer["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert [item["embedding"] for item in answer["data"]] == [[0.1, 0.2], [0.3, 0.4]]


def test_no_reported_count_is_an_estimate_of_a_quarter_of_the_characters() -> None:
    answer, estimated = openai_embeddings_from_gemini(
        "gemini-embedding-001", PAYLOAD, orjson.dumps(VECTORS)
    )
    assert estimated is True
    assert answer["usage"]["prompt_tokens"] == 2 + 1  # ceil(8 / 4) + ceil(3 / 4)
