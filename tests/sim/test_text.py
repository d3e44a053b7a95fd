"""The deterministic rules behind every simulated number (``tollgate.sim.text``/``engine``)."""

from __future__ import annotations

from tollgate.sim import text
from tollgate.sim.controls import Controls, parse_controls
from tollgate.sim.engine import ToolSpec, Turn, generate


def test_token_rule() -> None:
    assert [text.count_tokens("x" * n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
    assert text.prompt_tokens(["abcd", ""]) == (1 + 4) + (0 + 4)
    assert text.prompt_tokens(["abcd"], media_parts=2) == 5 + 2 * 85


def test_exact_length_and_truncation() -> None:
    padded = text.text_of_exact_tokens("Hello", 30)
    assert len(padded) == 120 and padded.startswith("Hello")
    assert text.truncate_to_tokens("abcdefghij", 2) == "abcdefgh"


def test_split_chunks() -> None:
    assert text.split_chunks("a bb  ccc", None) == ["a", " bb", "  ccc"]
    assert text.split_chunks("abcdefg", 3) == ["abc", "de", "fg"]
    assert text.split_chunks("ab", 5) == ["a", "b"]
    assert text.split_chunks("", 3) == [""]
    assert text.split_chunks("a b ", None) == ["a", " b "]
    assert text.split_chunks("   ", None) == ["   "]


def test_arguments_follow_the_schema() -> None:
    schema = {
        "type": "OBJECT",  # Gemini spells types in upper case
        "properties": {
            "name": {"type": "string"},
            "size": {"type": "number"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "mode": {"enum": ["fast", "slow"]},
            "inner": {"type": "object", "properties": {"ok": {"type": "boolean"}}},
            "maybe": {"type": ["null", "integer"]},
        },
    }
    assert text.arguments_from_schema(schema) == {
        "name": "sim-name",
        "size": 1.5,
        "tags": ["sim-tags"],
        "mode": "fast",
        "inner": {"ok": True},
        "maybe": 1,
    }
    assert text.arguments_from_schema(None) == {}


def test_embeddings_are_deterministic_unit_vectors() -> None:
    first = text.embedding_vector("alpha", 64)
    assert first == text.embedding_vector("alpha", 64)
    assert first != text.embedding_vector("beta", 64)
    assert abs(sum(v * v for v in first) - 1) < 1e-5


def test_engine_cache_and_reasoning_rules() -> None:
    turn = Turn(model="m", prompt_tokens=2000, last_user_text="hi", reasoning=True)
    reply = generate(turn, Controls())
    assert reply.usage.cached_tokens == 1000
    assert reply.usage.reasoning_tokens == 32
    not_eligible = generate(
        Turn(model="m", prompt_tokens=2000, last_user_text="hi", cache_eligible=False), Controls()
    )
    assert not_eligible.usage.cached_tokens == 0
    capped = generate(
        Turn(model="m", prompt_tokens=5, last_user_text="hi", reasoning=True, max_output_tokens=10),
        Controls(),
    )
    assert capped.usage.reasoning_tokens == 10 and capped.usage.output_tokens == 0
    assert capped.text == "" and capped.truncated


def test_engine_tool_rules() -> None:
    tools = [ToolSpec("a", {"properties": {"x": {"type": "integer"}}}), ToolSpec("b")]
    calls = generate(
        Turn(model="m", prompt_tokens=1, last_user_text="go", tools=tools), Controls()
    ).tool_calls
    assert [(c.name, c.input) for c in calls] == [("a", {"x": 1})]
    only_one = [ToolSpec("a")]
    twice = generate(
        Turn(model="m", prompt_tokens=1, last_user_text="PARALLEL", tools=only_one), Controls()
    )
    assert [c.name for c in twice.tool_calls] == ["a", "a"]
    after = generate(
        Turn(
            model="m",
            prompt_tokens=1,
            last_user_text="go",
            tools=tools,
            last_is_tool_result=True,
            tool_result_text="42",
        ),
        Controls(),
    )
    assert after.tool_calls == () and after.text.endswith("using the tool result: 42")


def test_control_sources_and_precedence() -> None:
    controls = parse_controls(
        {"x-sim-chunks": "2"}, "gpt~chunks=5~error=503~bogus=1", "hi [sim chunks=9 latency-ms=10]"
    )
    assert controls.chunks == 2
    assert controls.error == 503
    assert controls.latency_ms == 10
    assert parse_controls({}, "m", "").drop_after is None
