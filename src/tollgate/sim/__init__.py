"""tollgate's upstream simulator: OpenAI, Anthropic and Google Gemini in their real wire formats.

It answers the gateway in sandbox mode, the tests, the demo and the benchmarks. The official
``openai``, ``anthropic`` and ``google-genai`` SDKs parse its answers (``tests/sim`` proves it).

Use::

    from tollgate.sim import SimServer, create_sim_app, provider_base_urls

    async with SimServer(host="127.0.0.1", port=0) as sim:
        sim.base_url                  # "http://127.0.0.1:PORT"
        provider_base_urls(sim.base_url)["openai"]   # ".../openai/v1"
        sim.recorder.requests         # what reached the "upstream"

or ``python -m tollgate.sim --host 127.0.0.1 --port 8788`` (also ``tollgate sim``).

URLs (one server, all providers; see ``app.py``): ``/openai/v1`` (chat/completions, responses,
embeddings, models; every OpenAI-compatible vendor points here too), ``/anthropic``
(v1/messages, v1/messages/count_tokens), ``/google`` (v1 and v1beta ``models/{m}:generateContent``,
``:streamGenerateContent`` (``?alt=sse`` or a streamed JSON array), ``:countTokens``,
``:embedContent``, ``:batchEmbedContents``), and ``GET``/``DELETE /_sim/requests`` (the recorded
requests as JSON, bodies as text; a ring of the last 1000) and ``GET /_sim/health``.

Auth: any non-empty key is accepted, in the provider's own header (OpenAI ``Authorization: Bearer``,
Anthropic ``x-api-key`` plus the required ``anthropic-version``, Gemini ``x-goog-api-key`` or
``?key=``). A missing key, or the key ``sim-invalid-key``, gets the provider's real error: 401 for
OpenAI and Anthropic; for Gemini 403 ``PERMISSION_DENIED`` (missing) and 400 ``API_KEY_INVALID``
(invalid), because Google answers that way.

Answers (``text.py``, ``engine.py``): the reply is "This is a simulated reply from {model} to:
{first 12 words of the last user message}". Tokens are ``ceil(chars / 4)``; a prompt costs that
per message plus 4, plus the JSON of the tool declarations, plus 85 per image/audio/file part.
With tools and a user message last, the model calls the first tool (two tools when the prompt says
"parallel") with arguments built from the JSON schema; after a tool result it answers with text.
Output caps (``max_tokens``, ``max_completion_tokens``, ``max_output_tokens``,
``generationConfig.maxOutputTokens``) truncate the text and report ``length`` / ``max_tokens`` /
``max_output_tokens`` (incomplete) / ``MAX_TOKENS``.

Usage, per provider (each module's docstring has the details):

- OpenAI: ``prompt_tokens`` INCLUDES ``cached_tokens``; ``completion_tokens`` INCLUDES
  ``reasoning_tokens`` (32 by default for ``o1``/``o3``/``o4-mini``/``gpt-5*``); stream usage only
  in a final ``choices: []`` chunk when ``stream_options.include_usage`` is true. The Responses API
  reports the same way in ``input_tokens`` / ``output_tokens`` on the final response.
- Perplexity (served by the OpenAI chat API): ``usage`` gains top-level ``search_context_size``,
  ``citation_tokens`` and ``num_search_queries``, each only when asked for (the controls below, or
  ``web_search_options.search_context_size`` in the request, echoed); ``citation_tokens`` are
  beside ``prompt_tokens``, not in ``total_tokens``. Without them the usage is plain OpenAI.
  Chat Completions only: the Responses, Anthropic and Gemini APIs ignore these controls.
- Anthropic: ``input_tokens`` EXCLUDES ``cache_read_input_tokens`` and
  ``cache_creation_input_tokens`` (beside it); ``cache_creation_input_tokens`` is the total
  written, split in ``cache_creation`` into ``ephemeral_5m_input_tokens`` +
  ``ephemeral_1h_input_tokens``; ``message_start`` has the input usage and ``output_tokens: 1``,
  ``message_delta`` the cumulative ``output_tokens``.
- Gemini: ``promptTokenCount`` INCLUDES ``cachedContentTokenCount``; ``thoughtsTokenCount``
  (32 by default for 2.5 / 3 models) is BESIDE ``candidatesTokenCount``;
  ``totalTokenCount`` is their sum; every stream chunk carries the cumulative usage.
- Caching: prompts of at least 1024 tokens report half (rounded down) as cached (Anthropic: only
  when the request has a ``cache_control`` marker).

Controls (``controls.py``) — header ``x-sim-NAME: value``, model suffix ``model~NAME=value``, or
prompt directive ``[sim NAME=value ...]``, in that order of precedence; values are non-negative
integers except ``search-context``. An invalid value is a 400 in the provider's error shape whose
message names the ``x-sim-NAME`` (e.g. "x-sim-citation-tokens must be a non-negative integer"):

=====================  ==========================================================================
``x-sim-latency-ms``    wait this long before answering (before the response headers)
``x-sim-chunk-delay-ms`` wait this long between two stream frames
``x-sim-drop-after``    close the connection abruptly after N stream frames (SSE events / JSON
                        array elements); on a non-streamed request, after half the body
``x-sim-garble-after``  after N stream frames send one frame of malformed JSON (an unterminated
                        ``data:`` line), then end the stream cleanly
``x-sim-omit-last``     leave out the last N stream frames and end the stream cleanly (the
                        closing frames never come: ``[DONE]``, ``message_stop``, and with a
                        larger N the usage before them)
``x-sim-junk-lines``    put N lines that are not server-sent events before every SSE frame (a
                        stray ``<garbage> {...}`` line, which SSE parsers must skip)
``x-sim-error``         answer with this HTTP status (400-599) in the provider's error format;
                        429 adds ``retry-after``
``x-sim-retry-after``   the ``retry-after`` seconds of a simulated 429 (default 1)
``x-sim-output-tokens`` make the reply exactly N tokens long (before any output cap)
``x-sim-chunks``        stream the text (and tool arguments) in N pieces (default: one per word;
                        tool arguments in 3 pieces)
``x-sim-cached-tokens`` report N cached prompt tokens (capped at the prompt)
``x-sim-cache-write-tokens`` report N cache-write tokens IN TOTAL (Anthropic
                        ``cache_creation_input_tokens``, OpenAI Responses ``cache_write_tokens``);
                        capped at the prompt tokens not read from the cache
``x-sim-cache-write-1h-tokens`` of the cache writes, N were 1-hour writes (Anthropic
                        ``cache_creation.ephemeral_1h_input_tokens``; the rest are
                        ``ephemeral_5m_input_tokens``); capped at the total; given without
                        ``x-sim-cache-write-tokens`` it is the total as well (all writes 1-hour)
``x-sim-reasoning-tokens`` reasoning/thinking tokens for reasoning models (default 32)
``x-sim-search-context`` ``low``, ``medium`` or ``high``: OpenAI chat ``usage.search_context_size``
                        (Perplexity); wins over the request's ``web_search_options``
``x-sim-citation-tokens`` OpenAI chat ``usage.citation_tokens`` = N (Perplexity)
``x-sim-search-queries`` OpenAI chat ``usage.num_search_queries`` = N (Perplexity)
``x-sim-fail-first``    transient failures: the first N requests carrying the same
                        ``x-sim-fail-key`` answer ``x-sim-fail-status`` (default 503), after
                        ``x-sim-fail-latency-ms``; later ones are answered normally (retry tests)
``x-sim-fail-key``      the text key those N are counted under (1-128 of ``A-Za-z0-9_.:-``;
                        default: one shared key); counts live as long as the simulator app
``x-sim-fail-status``   the status of a transient failure (400-599, default 503)
``x-sim-fail-latency-ms`` how long a transient failure waits before answering (default 0)
=====================  ==========================================================================

Malformed JSON is a 400 and unknown routes a 404, both in the provider's error shape. Every answer
carries ``x-tollgate-sim: 1`` and the provider's usual ids (``x-request-id``, ``request-id``...).
"""

from tollgate.sim.app import create_sim_app
from tollgate.sim.cli import main
from tollgate.sim.recorder import RecordedRequest, SimRecorder
from tollgate.sim.server import SimServer, provider_base_urls

__all__ = [
    "RecordedRequest",
    "SimRecorder",
    "SimServer",
    "create_sim_app",
    "main",
    "provider_base_urls",
]
