"""The custom provider object's validation, table-driven: what is accepted, what is refused."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from tollgate.custom_provider_config import (
    ListQuery,
    default_custom_provider_fields,
    header_pairs,
    parse_custom_provider_create,
    parse_custom_provider_update,
    parse_headers,
    parse_list_query,
    validate_base_url,
    validate_link,
    validate_slug,
)
from tollgate.errors import InvalidRequest
from tollgate.netguard import AddressPolicy

MINIMAL: dict[str, Any] = {"name": "My LLM", "slug": "my-llm", "base_url": "https://llm.example"}


def headers(**values: str) -> str:
    return orjson.dumps({k.replace("_", "-"): v for k, v in values.items()}).decode()


# --- slug -----------------------------------------------------------------------------------


@pytest.mark.parametrize("slug", ["a", "my-llm", "0", "x" * 64, "-edge-", "v2-9"])
def test_slugs_accepted(slug: str) -> None:
    assert validate_slug(slug) == slug


@pytest.mark.parametrize(
    "slug",
    ["", "x" * 65, "My-LLM", "my_llm", "my llm", "my.llm", "émoji", "my-llm\n", 5, None, ["a"]],
)
def test_slugs_refused_naming_the_field(slug: object) -> None:
    with pytest.raises(InvalidRequest, match=r"^slug must be 1 to 64 characters") as caught:
        validate_slug(slug)
    assert caught.value.param == "slug" and caught.value.code == "invalid_field"


# --- base_url -------------------------------------------------------------------------------

HTTPS_ACCEPTED = [
    "https://api.example.com",
    "https://api.example.com/",
    "https://api.example.com/v1/openai",
    "https://api.example.com:8443/v1",
    "HTTPS://API.example.com/v1",
    "https://8.8.8.8/v1",
    "https://[2606:4700:4700::1111]/v1",
    "https://my_host.internal-corp.example./x",
]


@pytest.mark.parametrize("url", HTTPS_ACCEPTED)
@pytest.mark.parametrize("allow_http", [False, True])
def test_https_urls_accepted_and_stored_as_sent(url: str, allow_http: bool) -> None:
    assert validate_base_url(url, allow_http=allow_http) == url


# (url, message fragment when http is not allowed)
BASE_URL_REFUSED: list[tuple[object, str]] = [
    ("http://api.example.com", "base_url must be an https:// URL: http:// is refused unless"),
    ("ftp://api.example.com", "base_url must be an https:// URL; got"),
    ("api.example.com/v1", "base_url must be an https:// URL; got"),
    ("https:/api.example.com", "base_url must be an https:// URL; got"),
    ("https://", "base_url must be an https:// URL with a host"),
    ("https:///v1", "base_url must be an https:// URL with a host"),
    ("https://user:secret@api.example.com", "must not contain a user name or password"),
    ("https://token@api.example.com", "must not contain a user name or password"),
    ("https://api.example.com/v1#frag", "must not contain a fragment"),
    ("https://api.example.com/v1?key=1", "must not contain a query string"),
    ("https://api.example.com:99999", "with a valid host and port"),
    ("https://api.example.com:0", "with a host (and a port from 1 to 65535"),
    ("https://api.example.com:x", "with a valid host and port"),
    ("https://[::1", "with a valid host and port"),
    ("https://[not-ipv6]/", "with a valid host and port"),
    ("https://api example.com", "without spaces"),
    ("https://api.example.com/\n", "without spaces"),
    ("https://bücher.example", "non-ASCII"),
    ("https://a..b", "a valid host name"),
    ("https://-a.example", "a valid host name"),
    ("https://localhost/v1", "must point at a public host; 'localhost'"),
    ("https://api.localhost", "must point at a public host"),
    ("https://127.0.0.1:8000", "must point at a public host; '127.0.0.1'"),
    ("https://10.1.2.3", "must point at a public host"),
    ("https://192.168.0.10", "must point at a public host"),
    ("https://169.254.169.254/latest", "must point at a public host"),
    ("https://0.0.0.0", "must point at a public host"),
    ("https://[::1]:8000", "must point at a public host; '::1'"),
    ("https://[fe80::1]", "must point at a public host"),
    ("https://127.1", "IPv4 host is written as four decimal numbers"),
    ("https://2130706433", "IPv4 host is written as four decimal numbers"),
    ("https://0x7f.0.0.1", "IPv4 host is written as four decimal numbers"),
    ("https://" + "a" * 2040 + ".com", "of at most 2048 characters"),
    ("", "of at most 2048 characters"),
    (None, "of at most 2048 characters"),
    (42, "of at most 2048 characters"),
]


@pytest.mark.parametrize(("url", "message"), BASE_URL_REFUSED)
def test_base_urls_refused_by_default_naming_the_field(url: object, message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)) as caught:
        validate_base_url(url, allow_http=False)
    assert caught.value.param == "base_url" and caught.value.message.startswith("base_url ")


LAN = AddressPolicy.from_settings(["127.0.0.0/8", "::1/128", "10.0.0.0/8"])


@pytest.mark.parametrize(
    "url",
    [
        "http://api.example.com/v1",
        "http://127.0.0.1:8000/v1",
        "http://localhost:11434",
        "https://10.0.0.5/v1",
        "http://[::1]:8000",
        "http://vllm.internal:8000/v1/",
    ],
)
def test_allow_http_with_allowed_networks_accepts_http_and_those_hosts(url: str) -> None:
    assert validate_base_url(url, allow_http=True, policy=LAN) == url


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/v1",
        "http://localhost:11434",
        "http://[::1]:8000",
        "http://10.0.0.5/v1",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:127.0.0.1]/v1",
        "http://0.0.0.0:8000",
        "http://224.0.0.1",
        "http://[fd00::1]",
    ],
)
def test_allow_http_alone_does_not_open_private_addresses(url: str) -> None:
    with pytest.raises(InvalidRequest, match="allowed_private_networks"):
        validate_base_url(url, allow_http=True)


def test_allowed_networks_open_only_themselves() -> None:
    with pytest.raises(InvalidRequest, match="must point at a public host; '169.254.169.254'"):
        validate_base_url("http://169.254.169.254", allow_http=True, policy=LAN)
    with pytest.raises(InvalidRequest, match="must point at a public host; '192.168.1.2'"):
        validate_base_url("https://192.168.1.2", allow_http=False, policy=LAN)
    assert validate_base_url("https://10.9.8.7/v1", allow_http=False, policy=LAN)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://user:pw@10.0.0.5", "must not contain a user name or password"),
        ("http://10.0.0.5/#x", "must not contain a fragment"),
        ("http://10.0.0.5/?a=b", "must not contain a query string"),
        ("http://127.1", "four decimal numbers"),
        ("ws://10.0.0.5", "base_url must be an https:// or http:// URL"),
    ],
)
def test_allow_http_still_refuses_malformed_urls(url: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        validate_base_url(url, allow_http=True)


# --- headers --------------------------------------------------------------------------------

HEADERS_ACCEPTED: list[tuple[object, str | None]] = [
    (None, None),
    ("", None),
    ("{}", None),
    ('{"Authorization": "Bearer sk-live-1"}', '{"Authorization":"Bearer sk-live-1"}'),
    ('{ "x-api-key" : "k", "X-Org": "acme" }', '{"x-api-key":"k","X-Org":"acme"}'),
    ('{"x-empty": ""}', '{"x-empty":""}'),
    ('{"x-tab": "a\\tb"}', '{"x-tab":"a\\tb"}'),
    ('{"cookie": "session=1"}', '{"cookie":"session=1"}'),
]


@pytest.mark.parametrize(("given", "stored"), HEADERS_ACCEPTED)
def test_headers_accepted_and_stored_canonically(given: object, stored: str | None) -> None:
    assert parse_headers(given) == stored


HEADERS_REFUSED: list[tuple[object, str]] = [
    ({"x-api-key": "k"}, "headers must be a JSON object of header names to string values"),
    (5, "headers must be a JSON object"),
    ("not json", "it is not valid JSON"),
    ('["x-api-key", "k"]', "headers must be a JSON object"),
    ('"x"', "headers must be a JSON object"),
    ('{"x-n": 5}', "header 'x-n' must have a string value"),
    ('{"x-n": null}', "header 'x-n' must have a string value"),
    ('{"bad name": "v"}', "invalid header name 'bad name'"),
    ('{"": "v"}', "invalid header name ''"),
    ('{"x-é": "v"}', "invalid header name"),
    ('{"X-Key": "a", "x-key": "b"}', "names header 'x-key' twice"),
    ('{"Host": "evil.example"}', "cannot set 'Host'"),
    ('{"content-length": "0"}', "cannot set 'content-length'"),
    ('{"Transfer-Encoding": "chunked"}', "cannot set 'Transfer-Encoding'"),
    ('{"connection": "close"}', "cannot set 'connection'"),
    ('{"upgrade": "h2c"}', "cannot set 'upgrade'"),
    ('{"te": "trailers"}', "cannot set 'te'"),
    ('{"proxy-authorization": "x"}', "cannot set 'proxy-authorization'"),
    ('{"proxy-connection": "x"}', "cannot set 'proxy-connection'"),
    ('{"content-type": "text/plain"}', "cannot set 'content-type'"),
    ('{"accept-encoding": "gzip"}', "cannot set 'accept-encoding'"),
    ('{"expect": "100-continue"}', "cannot set 'expect'"),
    ('{"cf-aig-authorization": "x"}', "cf-aig-* headers are for the gateway"),
    ('{"x-inject": "a\\r\\nHost: evil"}', "printable ASCII characters (no line breaks)"),
    ('{"x-nul": "a\\u0000"}', "printable ASCII"),
    ('{"x-lf": "value\\n"}', "printable ASCII"),
    ('{"x-a\\n": "v"}', "invalid header name"),
    ('{"x-uni": "caf\\u00e9"}', "printable ASCII"),
    ('{"authorization": "Bearer tg_0123456789abcdefXYZ"}', "holds a tollgate token"),
    ('{"x-api-key": "tgop_0123456789abcdef"}', "holds a tollgate token"),
    (orjson.dumps({"x-long": "v" * 8193}).decode(), "at most 8192"),
    (orjson.dumps({f"x-{i}": "v" for i in range(33)}).decode(), "at most 32 headers; got 33"),
]


@pytest.mark.parametrize(("given", "message"), HEADERS_REFUSED)
def test_headers_refused_naming_the_field(given: object, message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)) as caught:
        parse_headers(given)
    assert caught.value.param == "headers" and caught.value.message.startswith("headers ")


def test_header_errors_never_repeat_a_value() -> None:
    secret = "sk-very-secret-value"
    for body in (
        {"x-a": secret + "\n"},
        {"host": secret},
        {"x-a": "Bearer tg_" + secret},
        {"x-a": secret * 1000},
    ):
        with pytest.raises(InvalidRequest) as caught:
            parse_headers(orjson.dumps(body).decode())
        assert secret not in caught.value.message


def test_header_pairs_lowercase_names_in_order() -> None:
    stored = parse_headers('{"X-Api-Key": "k", "Authorization": "Bearer s", "x-z": ""}')
    assert header_pairs(stored) == (("x-api-key", "k"), ("authorization", "Bearer s"), ("x-z", ""))
    assert header_pairs(None) == ()


# --- link -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [(None, None), ("", None), ("https://docs.example/x", "https://docs.example/x")],
)
def test_links_accepted(given: object, stored: str | None) -> None:
    assert validate_link(given) == stored


@pytest.mark.parametrize(
    "given", ["docs.example", "javascript:alert(1)", "https://", "https://a.b\n", 5]
)
def test_links_refused(given: object) -> None:
    with pytest.raises(InvalidRequest, match=r"^link must be an http:// or https:// URL or null"):
        validate_link(given)


# --- create and update bodies ---------------------------------------------------------------


def test_a_minimal_create_takes_cloudflares_defaults() -> None:
    fields = parse_custom_provider_create(MINIMAL, allow_http=False)
    assert fields == {**MINIMAL, **default_custom_provider_fields()}
    assert fields["enable"] is False and fields["beta"] is False


def test_a_full_create_keeps_every_field() -> None:
    body = {
        **MINIMAL,
        "description": "ours",
        "link": "https://docs.example",
        "enable": True,
        "beta": True,
        "curl_example": "curl ...",
        "js_example": "fetch(...)",
        "headers": headers(x_api_key="k"),
        "position": 3,
    }
    assert parse_custom_provider_create(body, allow_http=False) == body


def test_read_only_fields_are_ignored() -> None:
    body = {**MINIMAL, "created_at": "2024-01-01T00:00:00Z", "modified_at": "x", "logo": "svg"}
    assert "logo" not in parse_custom_provider_create(body, allow_http=False)
    assert parse_custom_provider_update({"logo": None}, "a" * 32, allow_http=False) == {}


# (body overrides, message start, param)
CREATE_REFUSED: list[tuple[dict[str, Any], str, str]] = [
    ({"name": ""}, "name must be a non-empty string of at most 200", "name"),
    ({"name": "x" * 201}, "name must be", "name"),
    ({"name": None}, "name must be", "name"),
    ({"slug": "Bad"}, "slug must be 1 to 64 characters", "slug"),
    ({"base_url": "http://x.example"}, "base_url must be an https:// URL: http://", "base_url"),
    ({"enable": "true"}, 'enable must be true or false; got "true"', "enable"),
    ({"beta": 1}, "beta must be true or false", "beta"),
    ({"description": 5}, "description must be a string of at most 10000", "description"),
    ({"curl_example": ["x"]}, "curl_example must be a string", "curl_example"),
    ({"js_example": "x" * 65537}, "js_example must be a string", "js_example"),
    ({"position": -1}, "position must be an integer from 0 to 2147483647 or null", "position"),
    ({"position": 1.5}, "position must be", "position"),
    ({"position": True}, "position must be", "position"),
    ({"link": "ftp://x"}, "link must be", "link"),
    ({"headers": "[]"}, "headers must be a JSON object", "headers"),
    ({"colour": "red"}, "unknown field 'colour'", "colour"),
    ({"id": "a" * 32}, "id is assigned by tollgate", "id"),
]


@pytest.mark.parametrize(("overrides", "message", "param"), CREATE_REFUSED)
def test_create_refusals_name_the_field(
    overrides: dict[str, Any], message: str, param: str
) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)) as caught:
        parse_custom_provider_create({**MINIMAL, **overrides}, allow_http=False)
    assert caught.value.param == param


@pytest.mark.parametrize("missing", ["name", "slug", "base_url"])
def test_create_needs_name_slug_and_base_url(missing: str) -> None:
    body = {k: v for k, v in MINIMAL.items() if k != missing}
    with pytest.raises(InvalidRequest, match=f"missing required field '{missing}'") as caught:
        parse_custom_provider_create(body, allow_http=False)
    assert caught.value.code == "missing_field" and caught.value.param == missing


@pytest.mark.parametrize("body", [None, [], "x", 5])
def test_a_body_must_be_an_object(body: object) -> None:
    with pytest.raises(InvalidRequest, match="must be a JSON object of custom provider fields"):
        parse_custom_provider_create(body, allow_http=False)
    with pytest.raises(InvalidRequest, match="must be a JSON object of custom provider fields"):
        parse_custom_provider_update(body, "a" * 32, allow_http=False)


def test_create_accepts_http_and_allowed_networks_when_allowed() -> None:
    body = {**MINIMAL, "base_url": "http://127.0.0.1:8000/v1"}
    created = parse_custom_provider_create(body, allow_http=True, policy=LAN)
    assert created["base_url"] == body["base_url"]
    with pytest.raises(InvalidRequest, match="allowed_private_networks"):
        parse_custom_provider_create(body, allow_http=True)


PROVIDER_ID = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("body", "changes"),
    [
        ({}, {}),
        ({"enable": True}, {"enable": True}),
        ({"description": None, "link": None}, {"description": None, "link": None}),
        ({"headers": ""}, {"headers": None}),
        ({"slug": "renamed", "position": None}, {"slug": "renamed", "position": None}),
        ({"id": PROVIDER_ID, "name": "n"}, {"name": "n"}),
    ],
)
def test_update_returns_only_the_fields_sent(body: dict[str, Any], changes: dict[str, Any]) -> None:
    assert parse_custom_provider_update(body, PROVIDER_ID, allow_http=False) == changes


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": None}, "name must be"),
        ({"slug": None}, "slug must be"),
        ({"base_url": None}, "base_url must be"),
        ({"enable": None}, "enable must be true or false"),
        ({"beta": None}, "beta must be true or false"),
        ({"id": "f" * 32}, "id cannot be changed"),
        ({"nope": 1}, "unknown field 'nope'"),
        ({"base_url": "http://x.example"}, "http:// is refused"),
    ],
)
def test_update_refusals_name_the_field(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        parse_custom_provider_update(body, PROVIDER_ID, allow_http=False)


# --- list queries ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "parsed"),
    [
        ({}, ListQuery()),
        ({"enable": "true", "beta": "False"}, ListQuery(enable=True, beta=False)),
        ({"enable": ""}, ListQuery()),
        ({"search": "Llm"}, ListQuery(search="Llm")),
        ({"order_by": "name ASC"}, ListQuery()),
        ({"order_by": "created_at desc"}, ListQuery(order_by="created_at", descending=True)),
        ({"order_by": "position"}, ListQuery(order_by="position")),
        ({"order_by": "  slug   DESC "}, ListQuery(order_by="slug", descending=True)),
    ],
)
def test_list_queries_accepted(query: dict[str, str], parsed: ListQuery) -> None:
    assert parse_list_query(query) == parsed


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"enable": "yes"}, 'enable must be true or false; got "yes"'),
        ({"beta": "1"}, "beta must be true or false"),
        ({"order_by": "id ASC"}, "order_by must be a field (name, slug, position"),
        ({"order_by": "name UP"}, "order_by must be"),
        ({"order_by": "name ASC x"}, "order_by must be"),
        ({"order_by": "name; DROP TABLE x"}, "order_by must be"),
        ({"search": "s" * 201}, "search must be at most 200 characters"),
    ],
)
def test_list_queries_refused_naming_the_parameter(query: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)) as caught:
        parse_list_query(query)
    assert caught.value.param == message.split()[0]
