"""Gateway features around a data-plane request (PRODUCT.md §3–5): logs, stored keys and ZDR,
the response cache, rate limits, retries and fallbacks, metadata and custom costs.

Each feature is a module here; `RequestContext` (context.py) is what they share about one
request, and `headers.py` reads and validates the `cf-aig-*` request headers they take.
"""
