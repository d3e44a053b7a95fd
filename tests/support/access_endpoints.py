"""Every HTTP endpoint a tollgate app serves, read from the app itself, for the access matrix
(tests/e2e/test_access_matrix.py).

Three sources, none of them a list kept by hand:

- the control app (FastAPI: management, logs, billing, admin, operations): its route table,
  walked through included routers, including the routes left out of `/openapi.json`;
- the dashboard (Starlette): its route table, through its mounts;
- the data plane (raw ASGI, no route table): the surfaces its router accepts, built from the
  same tables it dispatches on (the provider registry, the Unified API's and the REST surface's
  format tables, the Universal and custom-provider routes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tollgate.api.dataplane import COMPAT, COMPAT_FORMATS, REST_FORMATS
from tollgate.app import TollgateApp
from tollgate.providers.registry import PROVIDERS

PARAM = re.compile(r"\{(\w+)\}")
# `{id}` means the object of the collection named just before it.
_COLLECTION_IDS = {
    "gateways": "gateway_id",
    "logs": "log_id",
    "custom-providers": "custom_provider_id",
    "provider_configs": "config_id",
}
# Path parameters that name one of the victim's objects other than its account and gateway:
# under the attacker's own account they must find nothing.
PRIVATE_OBJECT_PARAMS = frozenset(
    {"log_id", "token_id", "topup_id", "custom_provider_id", "config_id"}
)

# Methods a route answers without a handler of its own (Starlette adds HEAD to every GET).
_IMPLICIT_METHODS = frozenset({"HEAD", "OPTIONS"})


@dataclass(frozen=True, order=True)
class Endpoint:
    """One method on one path template (`{name}` marks a path parameter)."""

    surface: str  # "control", "dashboard" or "dataplane"
    method: str
    path: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.method, self.path)


def _methods(route: Any) -> list[str]:
    return sorted(set(route.methods or ()) - _IMPLICIT_METHODS)


def _walk_fastapi(routes: Iterable[Any], prefix: str) -> Iterable[tuple[str, str]]:
    """(method, path) of every route, descending into included routers. FastAPI >= 0.165 keeps
    an included router as one `_IncludedRouter` entry (its prefix in `include_context`)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _walk_fastapi(included.routes, prefix + route.include_context.prefix)
        elif isinstance(route, Mount):
            yield from _walk_fastapi(route.routes, prefix + route.path)
        else:
            for method in _methods(route):
                yield method, prefix + route.path


def control_endpoints(app: TollgateApp) -> list[Endpoint]:
    return sorted(
        {Endpoint("control", m, p) for m, p in _walk_fastapi(app.control.router.routes, "")}
    )


def openapi_operations(schema: dict[str, Any]) -> set[tuple[str, str]]:
    """(METHOD, path) of every operation in an OpenAPI document."""
    return {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}


def _walk_starlette(routes: Iterable[Any], prefix: str) -> Iterable[Endpoint]:
    for route in routes:
        if isinstance(route, Mount) and isinstance(route.app, StaticFiles):
            yield Endpoint("dashboard", "GET", prefix + route.path + "/{path}")
        elif isinstance(route, Mount):
            yield from _walk_starlette(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            # Starlette's converter syntax (`{rest:path}`) is dropped: the template keeps names.
            path = (prefix + route.path).replace(":path}", "}")
            for method in _methods(route):
                yield Endpoint("dashboard", method, path)
        else:  # a kind of route this walker does not know must not be skipped silently
            raise AssertionError(f"unknown dashboard route type {type(route).__name__}")


def dashboard_endpoints(app: TollgateApp) -> list[Endpoint]:
    return sorted(set(_walk_starlette(app.dashboard.app.routes, "")))


def dataplane_endpoints() -> list[Endpoint]:
    """The data plane's surfaces, from the tables `tollgate.api.dataplane` routes with.

    A native provider is `ANY /v1/{account_id}/{gateway_id}/{slug}/{path}`; the matrix calls its
    chat endpoint with POST (the method the data plane bills). `compat/models` is the one GET
    the Unified API serves (`DataPlane._unified`)."""
    native = [
        Endpoint("dataplane", "POST", f"/v1/{{account_id}}/{{gateway_id}}/{slug}/{{path}}")
        for slug in PROVIDERS
    ]
    custom = Endpoint("dataplane", "POST", "/v1/{account_id}/{gateway_id}/custom-{slug}/{path}")
    compat = [
        Endpoint("dataplane", "POST", f"/v1/{{account_id}}/{{gateway_id}}/{COMPAT}/{path}")
        for path in COMPAT_FORMATS
    ]
    models = Endpoint("dataplane", "GET", f"/v1/{{account_id}}/{{gateway_id}}/{COMPAT}/models")
    universal = Endpoint("dataplane", "POST", "/v1/{account_id}/{gateway_id}")
    rest = [
        Endpoint("dataplane", "POST", f"/client/v4/accounts/{{account_id}}/ai/{path}")
        for path in REST_FORMATS
    ]
    return sorted({*native, custom, *compat, models, universal, *rest})


def all_endpoints(app: TollgateApp) -> list[Endpoint]:
    return [*control_endpoints(app), *dashboard_endpoints(app), *dataplane_endpoints()]


def parameters(path: str) -> list[str]:
    """The template's parameters, `{id}` resolved to the object it names."""
    names = []
    segments = path.split("/")
    for i, segment in enumerate(segments):
        for name in PARAM.findall(segment):
            names.append(_COLLECTION_IDS.get(segments[i - 1], "?") if name == "id" else name)
    return names
