"""The shapes of ids that appear in URLs, defined once.

Check them with `fullmatch`: with `match`, a `$` anchor would also accept a trailing newline.
"""

from __future__ import annotations

import re

# An account id: 32 lowercase hexadecimal characters.
ACCOUNT_ID = re.compile(r"[0-9a-f]{32}")
# A gateway id: 1 to 64 of lowercase letters, digits, '-' and '_' (Cloudflare's rule).
GATEWAY_ID = re.compile(r"[a-z0-9_-]{1,64}")
# An account's own provider on the data plane: `custom-{slug}`.
CUSTOM_PROVIDER = re.compile(r"custom-[a-z0-9-]{1,64}")
