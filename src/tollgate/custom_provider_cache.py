"""Custom provider lookups for the hot path: `custom-{slug}` resolved to where and how to forward.

The data plane routes `/v1/{account}/{gateway}/custom-{slug}/{path}` to `{base_url}/{path}` (the
query string kept), adding the provider's `headers`, and only when the provider's `enable` is
true: a provider that is missing or disabled is a 404 on the data plane, as an unknown provider
is. `resolve` returns disabled providers too (with `enable=False`), so the caller can say which
case it is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tollgate.custom_provider_config import header_pairs
from tollgate.store import Store
from tollgate.store import custom_providers as custom_provider_repo


@dataclass(frozen=True, slots=True)
class CustomProvider:
    """What the data plane needs to forward to a custom provider.

    `slug` is the bare slug (the provider is `custom-{slug}`). `base_url` has no trailing slash,
    so the upstream URL is `f"{base_url}/{path}"`. `headers` are the extra upstream headers as
    (lowercase name, value) pairs; values may be credentials, so never log them. Forward only
    when `enable` is true; a disabled provider answers 404.
    """

    slug: str
    base_url: str
    headers: tuple[tuple[str, str], ...]
    enable: bool


class CustomProviderCache:
    """Resolves (account, slug) to its `CustomProvider`, caching for `ttl` seconds.

    Misses are cached too, so a flood of requests for an unknown slug does not reach the
    database. The management API calls `invalidate` after every create, update and delete (for
    the old and the new slug), so changes made through this process are seen at once; other
    processes see them within `ttl`. A lookup that raced with an invalidation is not cached.
    """

    def __init__(self, store: Store, *, ttl: float = 5.0, max_entries: int = 100_000) -> None:
        self._store = store
        self._ttl = ttl
        self._max = max_entries
        self._cache: dict[tuple[str, str], tuple[float, CustomProvider | None]] = {}
        self._generation = 0  # bumped by every invalidation

    async def resolve(self, account_id: str, slug: str) -> CustomProvider | None:
        """The account's provider with this slug (without `custom-`), or None if none exists.

        Call only for an authenticated caller of `account_id`. Check `enable` before
        forwarding: a disabled provider is a 404 on the data plane.
        """
        key = (account_id, slug)
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[0] <= self._ttl:
            return cached[1]
        generation = self._generation
        record = await custom_provider_repo.get_custom_provider_by_slug(
            self._store, account_id, slug
        )
        provider = (
            None
            if record is None
            else CustomProvider(
                slug=record.slug,
                base_url=record.base_url.rstrip("/"),
                headers=header_pairs(record.headers),
                enable=record.enable,
            )
        )
        if generation == self._generation:  # no invalidation while we read: safe to keep
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[key] = (time.monotonic(), provider)
        return provider

    def invalidate(self, account_id: str, slug: str) -> None:
        self._generation += 1
        self._cache.pop((account_id, slug), None)
