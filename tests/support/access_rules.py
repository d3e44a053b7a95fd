"""Who may call what, and how a refusal must look, for the access matrix
(tests/e2e/test_access_matrix.py): the documented statuses and codes (docs/api/README.md
"Authentication", docs/api/admin.md, docs/api/operations.md, docs/dashboard.md), each in the
error format of the endpoint called."""

from __future__ import annotations

from enum import Enum

import httpx

from tests.support.access_endpoints import PRIVATE_OBJECT_PARAMS, Endpoint, parameters

SIGNED_OUT = "/dashboard/sign-in"


class Access(Enum):
    READ = "API token with read"
    EDIT = "API token with edit"
    RUN_OPENAI = "API token with run, OpenAI errors"
    RUN_ANTHROPIC = "API token with run, Anthropic errors"
    RUN_GOOGLE = "API token with run, Google errors"
    ADMIN = "operator token"
    SCRAPE = "loopback or operator token"
    STRIPE = "Stripe signature"
    PUBLIC = "anyone"
    DASH_READ = "dashboard session with read"
    DASH_EDIT = "dashboard session with edit"
    DASH_PUBLIC = "dashboard, anyone"


API = (Access.READ, Access.EDIT)
RUN = (Access.RUN_OPENAI, Access.RUN_ANTHROPIC, Access.RUN_GOOGLE)
DASHBOARD = (Access.DASH_READ, Access.DASH_EDIT)

CF_CODES = {400: 7001, 401: 10000, 403: 10000, 404: 7002}
ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}
GOOGLE_STATUS = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND"}


def kinds(endpoint: Endpoint, access: Access) -> list[str]:
    """The callers of an endpoint's cells (the test module's docstring says who each is)."""
    names = ["other", "lacking", "anonymous"]
    private = PRIVATE_OBJECT_PARAMS & set(parameters(endpoint.path))
    if access in (*API, *DASHBOARD) and (private or endpoint.path.endswith("/topup/status")):
        names.append("foreign")  # topup/status names the victim's payment in its body
    return names


# --- what each refusal must look like -----------------------------------------------------------

# (status, code) by kind. `None`: any `..._not_found` (the object's own: log_not_found, ...).
Expected = dict[str, tuple[int, str | None]]
EXPECTED: Expected = {  # API tokens, on /client/v4 and on the data plane
    "other": (403, "wrong_account"),
    "lacking": (403, "missing_permission"),
    "anonymous": (401, "missing_token"),
    "foreign": (404, None),
}
OPERATOR_EXPECTED: Expected = {  # an API token is not an operator token
    "other": (401, "invalid_token"),
    "lacking": (401, "invalid_token"),
    "anonymous": (401, "missing_token"),
}


def check_refusal(access: Access, kind: str, response: httpx.Response) -> str | None:
    """None when the answer is the documented refusal in the endpoint's format; else why not."""
    try:
        if access in (*DASHBOARD, Access.DASH_PUBLIC, Access.PUBLIC):
            return _check_page(access, kind, response)
        body = response.json()
        status: int
        code: str | None
        if access in (Access.ADMIN, Access.SCRAPE):
            status, code = OPERATOR_EXPECTED[kind]
        elif access == Access.STRIPE:
            status, code = 400, "invalid_signature"
        else:
            status, code = EXPECTED[kind]
        if response.status_code != status:
            return f"status {response.status_code}, expected {status}"
        if access == Access.ADMIN:
            error = body["error"]
            assert set(error) == {"code", "message", "param"} and error["code"] == code
        elif access == Access.RUN_OPENAI:
            assert body["error"]["code"] == code and body["error"]["type"] == ERROR_TYPES[status]
        elif access == Access.RUN_ANTHROPIC:
            assert body["type"] == "error" and body["error"]["type"] == ERROR_TYPES[status]
            assert body["error"]["code"] == code
        elif access == Access.RUN_GOOGLE:
            error = body["error"]
            assert error["code"] == status and error["status"] == GOOGLE_STATUS[status]
            assert error["details"][0]["reason"] == code
        else:  # the Cloudflare v4 envelope
            assert body["success"] is False and body["result"] is None, body
            assert body["messages"] == [], body
            error = body["errors"][0]
            assert error["code"] == CF_CODES[status], body
            if code is None:
                assert error["error_code"].endswith("_not_found"), body
            else:
                assert error["error_code"] == code, body
    except (AssertionError, KeyError, IndexError, TypeError, ValueError) as exc:
        return f"not the documented error format: {exc!r}: {response.text[:300]}"
    return None


def _check_page(access: Access, kind: str, response: httpx.Response) -> str | None:
    status = response.status_code
    if access == Access.PUBLIC:  # the probes and the schema: the same answer for anyone
        return None if status == 200 else f"status {status}"
    if access == Access.DASH_PUBLIC:  # sign-in and its redirects: what matters is `leaks`
        return None if status < 500 else f"status {status}"
    anonymous = kind == "anonymous" or (kind == "lacking" and access == Access.DASH_READ)
    if anonymous:  # no session: the sign-in page, where nothing of the account is shown
        if status != 303 or response.headers.get("location") != SIGNED_OUT:
            return f"status {status} to {response.headers.get('location')}, expected 303 to sign-in"
        return None
    expected, title = (404, "Page not found") if kind == "foreign" else (403, "Not allowed")
    if status != expected or title not in response.text:
        return f"status {status}, expected the {expected} page"
    if response.headers.get("cache-control") != "no-store":
        return "the refusal page may be cached"
    return None
