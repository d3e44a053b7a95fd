"""The gateway fields Cloudflare's API requires on create and on a full update (PUT), at their
plain values: tests spread them and override what they are about."""

from __future__ import annotations

from typing import Any

REQUIRED_GATEWAY_FIELDS: dict[str, Any] = {
    "cache_invalidate_on_update": False,
    "cache_ttl": 0,
    "collect_logs": True,
    "rate_limiting_interval": 0,
    "rate_limiting_limit": 0,
}
