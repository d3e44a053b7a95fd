"""Schemathesis over every operation in `/openapi.json`, against a live gateway.

Each operation gets `TOLLGATE_FUZZ_EXAMPLES` generated requests: 200 in `make test` (about 50 s
on two cores, mostly generating them); `make fuzz` runs 1,000 on each engine. They are sent with
a real account token (run, read and edit) or, under `/admin/v1`, the operator token. A request
must never get a 5xx, and every response must be one the document describes: a listed status,
its content type, a body matching its schema, and a 405 with an `Allow` header for a method the
path does not serve.

The document covers the management, billing, logs and admin APIs (`tollgate.api.openapi`
completes it). The data plane (`/v1/...`, and `/client/v4/.../ai/run|v1`) is not in it, so it is
not fuzzed here; tests/e2e/test_dataplane_bad_input.py covers its bad input.

Two schemathesis checks are off, because the document is knowingly loose where they judge:
`positive_data_acceptance` (the request bodies list field names without types: the handlers
validate each field and explain the error as a 400) and `negative_data_rejection` (unknown query
parameters are ignored, as by Cloudflare's API).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.conftest import ADMIN_TOKEN
from tests.fuzz.conftest import FuzzTarget
from tollgate.app import create_app
from tollgate.settings import load_settings

EXAMPLES = int(os.environ.get("TOLLGATE_FUZZ_EXAMPLES", "200"))


def _document() -> dict[str, Any]:
    """The gateway's `/openapi.json`, built without serving it (collection needs it before any
    fixture runs); `test_the_fuzzed_document_is_the_served_one` checks they are the same."""
    with tempfile.TemporaryDirectory() as directory:
        settings = load_settings(
            env={
                "TOLLGATE_DATA_DIR": directory,
                "TOLLGATE_DATABASE_URL": f"sqlite:///{directory}/unused.db",
                "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
            }
        )
        return create_app(settings).control.openapi()


DOCUMENT = _document()
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            "positive_data_acceptance": {"enabled": False},
            "negative_data_rejection": {"enabled": False},
        },
    }
)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


def _known_ids(target: FuzzTarget, path: str) -> dict[str, str]:
    """Path parameters that name a resource which exists, by the parameter's name."""
    if path.startswith("/admin/"):
        return {"token_id": target.admin_account.token_id}
    ids = {"gateway_id": target.gateway_id}
    if "/custom-providers/" in path:
        ids["id"] = target.custom_provider_id
    elif "/provider_configs/" in path:
        ids["id"] = target.provider_config_id
    elif "/logs/" in path:
        ids["id"] = target.log_id
    elif path.endswith("/gateways/{id}"):
        ids["id"] = target.gateway_id
    return ids


@schema.parametrize()
@schema.given(data=st.data())
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing written to .hypothesis/; a failure prints its curl to reproduce
    suppress_health_check=list(HealthCheck),
)
def test_every_response_is_documented(
    case: schemathesis.Case, data: st.DataObject, fuzz_target: FuzzTarget
) -> None:
    admin = case.path.startswith("/admin/")
    parameters = case.path_parameters
    if parameters is not None:
        if "account_id" in parameters:
            account = fuzz_target.admin_account if admin else fuzz_target.account
            parameters["account_id"] = account.account_id
        # Half the time an id of a resource that exists, so the handler's own work runs too.
        for name, known in _known_ids(fuzz_target, case.path).items():
            if name in parameters and data.draw(st.booleans(), label=f"existing {name}"):
                parameters[name] = known
    token = ADMIN_TOKEN if admin else fuzz_target.account.token
    case.call_and_validate(
        base_url=fuzz_target.url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def test_the_fuzzed_document_is_the_served_one(fuzz_target: FuzzTarget) -> None:
    response = httpx.get(f"{fuzz_target.url}/openapi.json")
    assert response.status_code == 200
    assert response.json() == DOCUMENT


def test_a_grant_whose_reference_names_another_is_a_documented_409(fuzz_target: FuzzTarget) -> None:
    """The fuzzer found this one undocumented (a generated reference repeated with another
    amount): each status a conflict can give is in the document, and its body matches."""
    operation = schema["/admin/v1/accounts/{account_id}/credits"]["POST"]
    reference = f"fuzz-{uuid.uuid4().hex}"
    for amount, status in ((100, 201), (100, 200), (200, 409)):
        case = operation.Case(
            path_parameters={"account_id": fuzz_target.admin_account.account_id},
            body={"amount_cents": amount, "reference": reference},
        )
        response = case.call_and_validate(
            base_url=fuzz_target.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert response.status_code == status, response.text
