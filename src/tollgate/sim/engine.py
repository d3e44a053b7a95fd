"""What the simulated model answers, and what it costs, independent of any wire format.

Each provider module reduces its request to a ``Turn`` and renders the ``Reply`` in its own format.
The rules (all deterministic):

- **Tools.** If the request declares tools, tool choice allows them and the last message is a user
  message (not a tool result), the model calls the first tool (or the named one when tool choice
  names it), with arguments built from the tool's JSON schema. If the last user message contains
  the word ``parallel``, it calls two tools (the first two, or the only one twice).
  If the last message is a tool result, the model answers with text.
- **Caching.** Cached prompt tokens are ``x-sim-cached-tokens`` when given, otherwise half the
  prompt (rounded down) when the prompt has at least ``CACHE_MIN_PROMPT_TOKENS`` tokens and the
  request is cache-eligible (always for OpenAI and Gemini, which cache implicitly; only with a
  ``cache_control`` marker for Anthropic). Cache writes only come from controls:
  ``x-sim-cache-write-tokens`` is the TOTAL written and ``x-sim-cache-write-1h-tokens`` how many of
  them were written with a 1-hour TTL (capped at the total; the rest are 5-minute writes). Given
  alone, ``x-sim-cache-write-1h-tokens`` is also the total (all writes are 1-hour). The total is
  capped at the prompt tokens not read from the cache.
- **Reasoning.** Reasoning models think for ``DEFAULT_REASONING_TOKENS`` tokens
  (``x-sim-reasoning-tokens`` overrides, a provider budget caps it). Reasoning counts against the
  output cap first, as it does for OpenAI o-series/GPT-5 and Gemini 2.5+.
- **Output cap.** With a cap of N tokens, reasoning takes ``min(reasoning, N)``, and the visible
  text is cut to what is left; if anything was cut the reply is ``truncated`` (finish reason
  ``length`` / ``max_tokens`` / ``MAX_TOKENS``). Tool calls are never cut.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tollgate.sim import text as simtext
from tollgate.sim.controls import Controls

CACHE_MIN_PROMPT_TOKENS = 1024
DEFAULT_REASONING_TOKENS = 32


@dataclass(frozen=True)
class ToolSpec:
    """A declared function tool: its name and JSON schema of parameters."""

    name: str
    parameters: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Turn:
    """A request reduced to what decides the answer.

    ``tool_choice`` is ``"auto"`` (call the first tool), ``"none"`` (never call) or a tool name.
    """

    model: str
    prompt_tokens: int
    last_user_text: str
    last_is_tool_result: bool = False
    tool_result_text: str = ""
    tools: Sequence[ToolSpec] = ()
    tool_choice: str = "auto"
    max_output_tokens: int | None = None
    reasoning: bool = False
    reasoning_budget: int | None = None
    cache_eligible: bool = True


@dataclass(frozen=True)
class ToolCall:
    """One call the model makes: ``arguments`` is the JSON text, ``input`` the parsed object."""

    id: str
    name: str
    input: dict[str, Any]
    arguments: str


@dataclass(frozen=True)
class Usage:
    """Provider-neutral usage: ``prompt_tokens`` includes ``cached_tokens`` and
    ``cache_write_tokens``; ``cache_write_1h_tokens`` is the part of ``cache_write_tokens``
    written with a 1-hour TTL (only Anthropic reports it); ``output_tokens`` excludes
    ``reasoning_tokens``. Each provider module maps this onto its own semantics."""

    prompt_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def uncached_prompt_tokens(self) -> int:
        """Prompt tokens that were neither read from nor written to the cache (Anthropic's
        ``input_tokens``)."""
        return max(self.prompt_tokens - self.cached_tokens - self.cache_write_tokens, 0)

    @property
    def cache_write_5m_tokens(self) -> int:
        """Cache writes with the default 5-minute TTL: the writes that are not 1-hour writes."""
        return self.cache_write_tokens - self.cache_write_1h_tokens


@dataclass(frozen=True)
class Reply:
    """What the simulated model produced."""

    model: str
    text: str
    tool_calls: Sequence[ToolCall] = ()
    truncated: bool = False
    usage: Usage = field(default_factory=lambda: Usage(prompt_tokens=0))


def new_id(prefix: str, length: int = 24) -> str:
    """A fresh random id in the provider's style (``chatcmpl-...``, ``msg_...``)."""
    return prefix + uuid.uuid4().hex[:length]


def generate(turn: Turn, controls: Controls) -> Reply:
    """Decide the reply to ``turn`` and its usage, following the rules in the module docstring."""
    usage_in = _prompt_usage(turn, controls)
    reasoning = _reasoning_tokens(turn, controls)
    remaining: int | None = None
    if turn.max_output_tokens is not None:
        reasoning = min(reasoning, turn.max_output_tokens)
        remaining = turn.max_output_tokens - reasoning

    calls = _tool_calls(turn)
    if calls:
        output = sum(
            simtext.count_tokens(call.name) + simtext.count_tokens(call.arguments) for call in calls
        )
        return Reply(
            model=turn.model,
            text="",
            tool_calls=calls,
            usage=_with_output(usage_in, output, reasoning),
        )

    if turn.last_is_tool_result:
        full = simtext.tool_result_reply_text(turn.model, turn.tool_result_text)
    else:
        full = simtext.reply_text(turn.model, turn.last_user_text)
    if controls.output_tokens is not None:
        full = simtext.text_of_exact_tokens(full, controls.output_tokens)
    text = full
    if remaining is not None and simtext.count_tokens(full) > remaining:
        text = simtext.truncate_to_tokens(full, remaining)
    return Reply(
        model=turn.model,
        text=text,
        truncated=text != full,
        usage=_with_output(usage_in, simtext.count_tokens(text), reasoning),
    )


def _with_output(usage: Usage, output: int, reasoning: int) -> Usage:
    return dataclasses.replace(usage, output_tokens=output, reasoning_tokens=reasoning)


def _prompt_usage(turn: Turn, controls: Controls) -> Usage:
    prompt = turn.prompt_tokens
    if controls.cached_tokens is not None:
        cached = controls.cached_tokens
    elif turn.cache_eligible and prompt >= CACHE_MIN_PROMPT_TOKENS:
        cached = prompt // 2
    else:
        cached = 0
    cached = min(cached, prompt)
    asked = controls.cache_write_tokens
    if asked is None:
        asked = controls.cache_write_1h_tokens
    write = min(asked or 0, prompt - cached)
    write_1h = min(controls.cache_write_1h_tokens or 0, write)
    return Usage(
        prompt_tokens=prompt,
        cached_tokens=cached,
        cache_write_tokens=write,
        cache_write_1h_tokens=write_1h,
    )


def _reasoning_tokens(turn: Turn, controls: Controls) -> int:
    if not turn.reasoning:
        return 0
    tokens = (
        controls.reasoning_tokens
        if controls.reasoning_tokens is not None
        else DEFAULT_REASONING_TOKENS
    )
    if turn.reasoning_budget is not None:
        tokens = min(tokens, turn.reasoning_budget)
    return max(tokens, 0)


def _tool_calls(turn: Turn) -> tuple[ToolCall, ...]:
    if not turn.tools or turn.last_is_tool_result or turn.tool_choice == "none":
        return ()
    chosen = [tool for tool in turn.tools if tool.name == turn.tool_choice]
    tools = chosen or list(turn.tools)
    if "parallel" in turn.last_user_text.lower():
        picked = (tools + tools)[:2] if len(tools) == 1 else tools[:2]
    else:
        picked = tools[:1]
    calls = []
    for tool in picked:
        arguments = simtext.arguments_from_schema(tool.parameters)
        calls.append(
            ToolCall(
                id=new_id("", 24),
                name=tool.name,
                input=arguments,
                arguments=simtext.to_json(arguments),
            )
        )
    return tuple(calls)
