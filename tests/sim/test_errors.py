"""Bad input gets each provider's real error shape: missing keys, malformed JSON, wrong
fields, unknown routes."""

from __future__ import annotations

import httpx
import pytest

OPENAI_AUTH = {"authorization": "Bearer k"}
ANTHROPIC_AUTH = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
GOOGLE_AUTH = {"x-goog-api-key": "k"}
CHAT = "/openai/v1/chat/completions"
MESSAGES = "/anthropic/v1/messages"
GENERATE = "/google/v1beta/models/gemini-2.0-flash:generateContent"


def test_openai_missing_key(http: httpx.Client) -> None:
    response = http.post(CHAT, json={"model": "m", "messages": []})
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] is None
    assert error["message"].startswith("You didn't provide an API key.")
    assert response.headers["x-tollgate-sim"] == "1"


def test_anthropic_missing_key(http: httpx.Client) -> None:
    response = http.post(MESSAGES, headers={"anthropic-version": "2023-06-01"}, json={})
    assert response.status_code == 401
    body = response.json()
    assert body["type"] == "error"
    assert body["error"] == {
        "type": "authentication_error",
        "message": "x-api-key header is required",
    }
    assert body["request_id"].startswith("req_")


def test_anthropic_accepts_a_bearer_token(http: httpx.Client) -> None:
    response = http.post(
        MESSAGES,
        headers={"authorization": "Bearer oauth-token", "anthropic-version": "2023-06-01"},
        json={"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
    )
    assert response.status_code == 200


def test_google_missing_key_is_403_permission_denied(http: httpx.Client) -> None:
    response = http.post(GENERATE, json={"contents": []})
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == 403 and error["status"] == "PERMISSION_DENIED"
    assert error["message"].startswith("Method doesn't allow unregistered callers")


@pytest.mark.parametrize(
    ("path", "headers", "check"),
    [
        (CHAT, OPENAI_AUTH, lambda b: b["error"]["type"] == "invalid_request_error"),
        (MESSAGES, ANTHROPIC_AUTH, lambda b: b["error"]["type"] == "invalid_request_error"),
        (GENERATE, GOOGLE_AUTH, lambda b: b["error"]["status"] == "INVALID_ARGUMENT"),
    ],
)
def test_malformed_json_is_a_400_in_the_provider_shape(
    http: httpx.Client, path, headers, check
) -> None:  # type: ignore[no-untyped-def]
    response = http.post(
        path, headers={**headers, "content-type": "application/json"}, content=b"{nope"
    )
    assert response.status_code == 400
    assert check(response.json())


def test_auth_is_checked_before_the_body(http: httpx.Client) -> None:
    response = http.post(
        CHAT, headers={"authorization": "Bearer sim-invalid-key"}, content=b"{nope"
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    ("method", "path", "headers", "check"),
    [
        (
            "POST",
            "/openai/v1/nope",
            OPENAI_AUTH,
            lambda b: b["error"]["message"] == "Invalid URL (POST /v1/nope)",
        ),
        (
            "POST",
            "/anthropic/v1/nope",
            ANTHROPIC_AUTH,
            lambda b: b["error"]["type"] == "not_found_error",
        ),
        (
            "POST",
            "/google/v1beta/models/x:nope",
            GOOGLE_AUTH,
            lambda b: b["error"]["status"] == "NOT_FOUND",
        ),
        ("GET", "/elsewhere", {}, lambda b: b["error"]["type"] == "invalid_request_error"),
    ],
)
def test_unknown_routes_are_404_in_the_provider_shape(
    http: httpx.Client, method, path, headers, check
) -> None:  # type: ignore[no-untyped-def]
    response = http.request(method, path, headers=headers)
    assert response.status_code == 404
    assert check(response.json())


def test_wrong_method_is_405(http: httpx.Client) -> None:
    response = http.get(CHAT, headers=OPENAI_AUTH)
    assert response.status_code == 405
    assert "error" in response.json()


@pytest.mark.parametrize(
    ("path", "headers", "body", "message"),
    [
        (
            CHAT,
            OPENAI_AUTH,
            {"messages": [{"role": "user", "content": "x"}]},
            "you must provide a model parameter",
        ),
        (CHAT, OPENAI_AUTH, {"model": "m"}, "Missing required parameter: 'messages'."),
        (MESSAGES, ANTHROPIC_AUTH, {"model": "m", "max_tokens": 5}, "messages: Field required"),
        (
            MESSAGES,
            ANTHROPIC_AUTH,
            {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
            "model: Field required",
        ),
        (
            GENERATE,
            GOOGLE_AUTH,
            {},
            "* GenerateContentRequest.contents: contents is not specified\n",
        ),
    ],
)
def test_missing_required_fields(http: httpx.Client, path, headers, body, message) -> None:  # type: ignore[no-untyped-def]
    response = http.post(path, headers=headers, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == message


def test_a_body_of_the_wrong_shape_is_a_400_not_a_500(http: httpx.Client) -> None:
    response = http.post(
        CHAT, headers=OPENAI_AUTH, json={"model": "m", "messages": ["not an object"]}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
