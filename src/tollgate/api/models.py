"""The model catalog over HTTP: `GET /client/v4/accounts/{account_id}/ai/models/search`.

Every model the gateway can price, with USD per million tokens (PRODUCT.md §2.2), in the
Cloudflare v4 envelope with page/per_page pagination. Needs a token with `read`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from tollgate.api.auth import authorize_api_call
from tollgate.api.envelope import cloudflare_response, page_request
from tollgate.services import Services


def models_router(services: Services) -> APIRouter:
    router = APIRouter()

    @router.get("/accounts/{account_id}/ai/models/search")
    async def search_models(request: Request, account_id: str) -> Response:
        await authorize_api_call(
            services.tokens, request.headers.get("authorization"), account_id, "read"
        )
        query = request.query_params
        page = page_request(query, max_per_page=1000, default_per_page=100)
        models = services.catalog.models(
            search=query.get("search") or None,
            # The cloudflare SDK's ai.models.list() filters by `author`.
            provider=query.get("provider") or query.get("author") or None,
        )
        shown = models[page.offset : page.offset + page.per_page]
        return cloudflare_response(
            [model.to_public() for model in shown],
            result_info=page.result_info(len(shown), len(models)),
        )

    return router
