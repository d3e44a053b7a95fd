"""The shapes of ids that appear in URLs, defined once."""

from __future__ import annotations

import re

# An account id: 32 lowercase hexadecimal characters.
ACCOUNT_ID = re.compile(r"^[0-9a-f]{32}$")
# A gateway id: 1 to 64 of lowercase letters, digits, '-' and '_' (Cloudflare's rule).
GATEWAY_ID = re.compile(r"^[a-z0-9_-]{1,64}$")
