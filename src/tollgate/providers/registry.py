"""The provider registry: slugs, default base URLs and how each provider takes its key.

Registries are data (ARCHITECTURE.md principle 4): an OpenAI-compatible vendor is a row here, not
new code. `wire` names the wire format the provider speaks; `auth` names how its key travels;
`api_prefix` is what a translated request puts before the adapter's path (Cloudflare's documented
paths for mistral and grok carry the `v1/`, so their base URLs do not); `max_tokens_field` is the
name the vendor accepts for the output cap; `sim_path` is where tollgate's simulator serves that
wire format in sandbox mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

WireFormat = Literal["openai", "anthropic", "google"]
AuthStyle = Literal["bearer", "x-api-key", "x-goog-api-key"]


@dataclass(frozen=True, slots=True)
class ProviderRow:
    slug: str
    wire: WireFormat
    auth: AuthStyle
    default_base_url: str | None  # None: the operator must configure it
    key_env: str  # the conventional environment variable for the operator's managed key
    sim_path: str
    api_prefix: str = ""
    max_tokens_field: str = "max_completion_tokens"
    key_required: bool = True


def _openai_compatible(
    slug: str, base: str, key_env: str, *, prefix: str = "", max_tokens: str = "max_tokens"
) -> ProviderRow:
    sim_path = "/openai" if prefix else "/openai/v1"
    return ProviderRow(slug, "openai", "bearer", base, key_env, sim_path, prefix, max_tokens)


PROVIDERS: dict[str, ProviderRow] = {
    row.slug: row
    for row in (
        ProviderRow(
            "openai",
            "openai",
            "bearer",
            "https://api.openai.com/v1",
            "OPENAI_API_KEY",
            "/openai/v1",
        ),
        ProviderRow(
            "anthropic",
            "anthropic",
            "x-api-key",
            "https://api.anthropic.com",
            "ANTHROPIC_API_KEY",
            "/anthropic",
        ),
        ProviderRow(
            "google-ai-studio",
            "google",
            "x-goog-api-key",
            "https://generativelanguage.googleapis.com",
            "GEMINI_API_KEY",
            "/google",
        ),
        _openai_compatible(
            "groq",
            "https://api.groq.com/openai/v1",
            "GROQ_API_KEY",
            max_tokens="max_completion_tokens",
        ),
        _openai_compatible("grok", "https://api.x.ai", "XAI_API_KEY", prefix="v1/"),
        _openai_compatible("mistral", "https://api.mistral.ai", "MISTRAL_API_KEY", prefix="v1/"),
        _openai_compatible("deepseek", "https://api.deepseek.com", "DEEPSEEK_API_KEY"),
        _openai_compatible(
            "cerebras",
            "https://api.cerebras.ai/v1",
            "CEREBRAS_API_KEY",
            max_tokens="max_completion_tokens",
        ),
        _openai_compatible("perplexity-ai", "https://api.perplexity.ai", "PERPLEXITY_API_KEY"),
        _openai_compatible("openrouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
        # The operator's own OpenAI-compatible inference server (vLLM, Ollama, llama.cpp...):
        # no public default, and often no key.
        ProviderRow(
            "workers-ai",
            "openai",
            "bearer",
            None,
            "WORKERS_AI_API_KEY",
            "/openai",
            "v1/",
            "max_tokens",
            key_required=False,
        ),
    )
}

# Model prefixes other surfaces use for the same provider (`google/gemini-…` on the REST API,
# `xai/grok-…`, `perplexity/…` on /compat).
PROVIDER_ALIASES = {"google": "google-ai-studio", "xai": "grok", "perplexity": "perplexity-ai"}


def provider_for_model(model: str) -> tuple[str, str] | None:
    """Split `provider/model` into (registry slug, model name); None without a prefix."""
    prefix, sep, name = model.partition("/")
    if not sep or not prefix or not name:
        return None
    return PROVIDER_ALIASES.get(prefix, prefix), name
