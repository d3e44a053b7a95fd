"""Which key pays: tollgate tokens authenticate and are stripped; provider keys pass through."""

from __future__ import annotations

import pytest

from tollgate.credentials import managed_key_header, split_credentials

TOKEN = "tg_0123456789abcdef" + "s" * 43


def headers(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in pairs]


@pytest.mark.parametrize(
    ("inbound", "query", "token", "provider_key", "forwarded"),
    [
        # The SDK's api_key is a tollgate token: it authenticates and is not forwarded.
        ([("authorization", f"Bearer {TOKEN}")], "", TOKEN, False, []),
        (
            [("x-api-key", TOKEN), ("anthropic-version", "2023-06-01")],
            "",
            TOKEN,
            False,
            [("anthropic-version", "2023-06-01")],
        ),
        ([("x-goog-api-key", TOKEN)], "", TOKEN, False, []),
        ([], f"alt=sse&key={TOKEN}", TOKEN, False, []),
        # Gateway token in cf-aig-authorization, the client's own key passes through.
        (
            [("cf-aig-authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer sk-own")],
            "",
            TOKEN,
            True,
            [("authorization", "Bearer sk-own")],
        ),
        ([("x-goog-api-key", "AIza-own")], "", None, True, [("x-goog-api-key", "AIza-own")]),
        ([], "key=AIza-own", None, True, []),
        # Every gateway header and hop-by-hop header is dropped.
        (
            [
                ("cf-aig-metadata", "{}"),
                ("cf-aig-zdr", "true"),
                ("connection", "keep-alive"),
                ("host", "gw"),
                ("content-length", "3"),
                ("openai-beta", "assistants=v2"),
            ],
            "",
            None,
            False,
            [("openai-beta", "assistants=v2")],
        ),
    ],
)
def test_split_credentials(
    inbound: list[tuple[str, str]],
    query: str,
    token: str | None,
    provider_key: bool,
    forwarded: list[tuple[str, str]],
) -> None:
    result = split_credentials(headers(*inbound), query.encode())
    assert result.token == token
    assert result.provider_key is provider_key
    assert result.headers == forwarded
    assert TOKEN not in result.query


def test_query_keeps_other_parameters() -> None:
    result = split_credentials([], f"alt=sse&key={TOKEN}".encode())
    assert result.query == "alt=sse"


def test_cf_aig_authorization_wins_over_a_token_in_authorization() -> None:
    other = "tg_fedcba9876543210" + "o" * 43
    result = split_credentials(
        headers(("authorization", f"Bearer {other}"), ("cf-aig-authorization", f"Bearer {TOKEN}")),
        b"",
    )
    assert result.token == TOKEN and result.headers == []


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        ("bearer", ("authorization", "Bearer k")),
        ("x-api-key", ("x-api-key", "k")),
        ("x-goog-api-key", ("x-goog-api-key", "k")),
    ],
)
def test_managed_key_goes_where_each_provider_expects_it(
    style: str, expected: tuple[str, str]
) -> None:
    assert managed_key_header(style, "k") == expected  # type: ignore[arg-type]
