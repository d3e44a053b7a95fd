"""The dashboard's HTTP plumbing: templates, security headers, the session cookie, form bodies.

Every HTML response carries a strict Content-Security-Policy (only tollgate's own scripts,
styles and images; no inline script; forms post only to tollgate), `no-store` caching (pages show
balances and must not be replayed from a shared cache) and frame denial.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from tollgate.dashboard.format import usd
from tollgate.dashboard.sessions import COOKIE_NAME
from tollgate.money import from_cents

BASE = "/dashboard"
HERE = Path(__file__).parent
MAX_FORM_BYTES = 16_384

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def build_templates() -> Environment:
    """Jinja2 over `templates/`, autoescaping every template, failing loudly on a missing name."""
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["usd"] = usd
    env.filters["cents"] = lambda cents: usd(from_cents(cents))
    env.globals["base"] = BASE
    return env


class Pages:
    """Renders templates into responses with the dashboard's headers."""

    def __init__(self) -> None:
        self.env = build_templates()

    def render(self, name: str, context: Mapping[str, Any], *, status: int = 200) -> HTMLResponse:
        html = self.env.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def redirect(location: str, *, status: int = 303) -> RedirectResponse:
    return RedirectResponse(location, status_code=status, headers=SECURITY_HEADERS)


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session_cookie(response: Response, request: Request, session_id: str) -> None:
    """The session cookie: HttpOnly, SameSite=Lax, scoped to the dashboard, Secure over https.

    No Max-Age: a browser session cookie; the server decides when a session has expired."""
    response.set_cookie(
        COOKIE_NAME,
        session_id,
        path=BASE,
        httponly=True,
        samesite="lax",
        secure=is_https(request),
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE_NAME, path=BASE, httponly=True, samesite="lax", secure=is_https(request)
    )


class FormTooLarge(Exception):
    pass


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form body (first value of each field), at most `MAX_FORM_BYTES`."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_FORM_BYTES:
            raise FormTooLarge
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return {}
    fields = parse_qs(text, keep_blank_values=True, max_num_fields=50)
    return {name: values[0] for name, values in fields.items() if values}


def same_origin(request: Request) -> bool:
    """False when the browser says the form came from another site (`Origin` header).

    Browsers send `Origin` on every cross-site POST; a missing header (older clients, tests)
    leaves the decision to the CSRF token alone."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return urlsplit(origin).netloc == host
