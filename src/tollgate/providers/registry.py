"""The provider registry: slugs, default base URLs and how each provider takes its key.

Registries are data (ARCHITECTURE.md principle 4): an OpenAI-compatible vendor is a row here, not
new code. `wire` names the wire format the provider speaks; `auth` names how its key travels;
`sim_path` is where tollgate's simulator serves that wire format in sandbox mode.
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
    default_base_url: str
    key_env: str  # the conventional environment variable for the operator's managed key
    sim_path: str


_ROWS = [
    # slug, wire, auth, default base URL, key variable, simulator path
    ("openai", "openai", "bearer", "https://api.openai.com/v1", "OPENAI_API_KEY", "/openai/v1"),
    (
        "anthropic",
        "anthropic",
        "x-api-key",
        "https://api.anthropic.com",
        "ANTHROPIC_API_KEY",
        "/anthropic",
    ),
    (
        "google-ai-studio",
        "google",
        "x-goog-api-key",
        "https://generativelanguage.googleapis.com",
        "GEMINI_API_KEY",
        "/google",
    ),
    ("groq", "openai", "bearer", "https://api.groq.com/openai/v1", "GROQ_API_KEY", "/openai/v1"),
    # Cloudflare's documented paths for these two carry the version: /grok/v1/chat/completions.
    ("grok", "openai", "bearer", "https://api.x.ai", "XAI_API_KEY", "/openai"),
    ("mistral", "openai", "bearer", "https://api.mistral.ai", "MISTRAL_API_KEY", "/openai"),
    ("deepseek", "openai", "bearer", "https://api.deepseek.com", "DEEPSEEK_API_KEY", "/openai/v1"),
    (
        "cerebras",
        "openai",
        "bearer",
        "https://api.cerebras.ai/v1",
        "CEREBRAS_API_KEY",
        "/openai/v1",
    ),
    (
        "perplexity-ai",
        "openai",
        "bearer",
        "https://api.perplexity.ai",
        "PERPLEXITY_API_KEY",
        "/openai/v1",
    ),
    (
        "openrouter",
        "openai",
        "bearer",
        "https://openrouter.ai/api/v1",
        "OPENROUTER_API_KEY",
        "/openai/v1",
    ),
]

PROVIDERS: dict[str, ProviderRow] = {row[0]: ProviderRow(*row) for row in _ROWS}  # type: ignore[arg-type]
