"""Pick the upstream adapter for a registry row (one instance per row, built on first use)."""

from __future__ import annotations

from functools import cache
from typing import Literal, cast

from tollgate.providers.anthropic import AnthropicAdapter
from tollgate.providers.base import ProviderAdapter
from tollgate.providers.google import GoogleAdapter
from tollgate.providers.openai import OpenAIChatAdapter
from tollgate.providers.registry import ProviderRow

MaxTokensField = Literal["max_completion_tokens", "max_tokens"]


@cache
def adapter_for(row: ProviderRow) -> ProviderAdapter:
    if row.wire == "anthropic":
        return AnthropicAdapter(row.slug)
    if row.wire == "google":
        return GoogleAdapter(row.slug)
    return OpenAIChatAdapter(row.slug, max_tokens_field=cast(MaxTokensField, row.max_tokens_field))
