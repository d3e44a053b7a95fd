"""The SSE decoder and encoder: spec behaviour, and independence from chunk boundaries."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.translation.helpers import byte_by_byte, fixture_bytes, random_splits, split_at
from tollgate.sse import Event, SSEDecoder, encode, encode_json_data


def decode(*chunks: bytes) -> list[Event]:
    decoder = SSEDecoder()
    events: list[Event] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events + decoder.close()


def test_data_lines_dispatch_on_blank_line() -> None:
    assert decode(b"data: hello\n\n") == [Event("hello")]


def test_event_name_id_and_retry_are_kept() -> None:
    events = decode(b"event: message_stop\nid: 7\nretry: 1500\ndata: {}\n\n")
    assert events == [Event("{}", "message_stop", "7", 1500)]


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert decode(b"data: a\ndata: b\ndata:c\n\n") == [Event("a\nb\nc")]


def test_comments_and_empty_events_are_ignored() -> None:
    assert decode(b": keep-alive\n\n: another\ndata: x\n\n\n\n") == [Event("x")]


def test_event_name_does_not_leak_into_the_next_event() -> None:
    assert decode(b"event: ping\n\ndata: x\n\n") == [Event("x")]


def test_crlf_and_lone_cr_line_endings() -> None:
    assert decode(b"data: a\r\n\r\ndata: b\r\rdata: c\n\n") == [
        Event("a"),
        Event("b"),
        Event("c"),
    ]


def test_crlf_split_between_chunks_is_one_line_ending() -> None:
    assert decode(b"data: a\r", b"\n\r", b"\n") == [Event("a")]


def test_leading_bom_is_dropped() -> None:
    assert decode(b"\xef\xbb\xbfdata: x\n\n") == [Event("x")]


def test_one_space_after_colon_is_stripped_not_more() -> None:
    assert decode(b"data:  two\n\n") == [Event(" two")]


def test_close_dispatches_a_complete_but_unterminated_event() -> None:
    assert decode(b'data: {"type":"message_stop"}\n') == [Event('{"type":"message_stop"}')]


def test_close_drops_a_line_cut_mid_way() -> None:
    assert decode(b'data: complete\n\ndata: {"type":"mess') == [Event("complete")]


def test_utf8_split_inside_a_character_survives() -> None:
    data = "data: Bogotá 冒险\n\n".encode()
    assert decode(*byte_by_byte(data)) == [Event("Bogotá 冒险")]


def test_every_split_point_of_a_real_stream_gives_the_same_events() -> None:
    data = fixture_bytes("google", "stream_legacy_crlf.sse")[:1200]
    whole = decode(data)
    for cut in range(1, len(data)):
        assert decode(*split_at(data, [cut])) == whole


def test_random_splits_and_byte_by_byte_match_whole_feeding() -> None:
    data = fixture_bytes("anthropic", "stream_tool_use.sse")
    whole = decode(data)
    assert len(whole) == 30  # every event, the unterminated message_stop included
    for seed in range(50):
        assert decode(*random_splits(data, seed)) == whole
    assert decode(*byte_by_byte(data)) == whole


def test_encode_json_data_fast_path() -> None:
    assert encode_json_data(b"{}") == b"data: {}\n\n"
    assert encode_json_data(b"{}", b"ping") == b"event: ping\ndata: {}\n\n"


def test_encode_splits_multi_line_data() -> None:
    assert encode("a\nb", event="x", id="1") == b"event: x\nid: 1\ndata: a\ndata: b\n\n"


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(
    st.lists(
        st.tuples(
            _text.filter(lambda s: "\r" not in s and "\n" not in s),
            st.none() | st.from_regex(r"[a-z_]{1,12}", fullmatch=True),
        ),
        max_size=8,
    ),
    st.lists(st.integers(min_value=1, max_value=10_000), max_size=10),
)
def test_encode_then_decode_round_trips_at_any_split(
    events: list[tuple[str, str | None]], cuts: list[int]
) -> None:
    data = b"".join(encode(text.lstrip(" ") or "x", name) for text, name in events)
    expected = [Event(text.lstrip(" ") or "x", name) for text, name in events]
    cuts = [c % len(data) for c in cuts if data and c % len(data)]
    assert decode(*split_at(data, cuts)) == expected
