"""Client-facing wire formats: the request a client sends, and what it must get back.

Each format module mirrors an upstream adapter in reverse, and does no I/O:

    parse_request(body: dict) -> ChatRequest             (raises InvalidRequest naming the field)
    render_response(response: ChatResponse) -> dict      (the non-streaming body)
    StreamRenderer(...).render(event) -> bytes           (that format's exact SSE, incrementally)
    StreamRenderer.close() -> bytes                      (the terminator, if the format has one)
    StreamRenderer.render_error(status, code, message)   (an in-band error after SSE started)
    render_error_body(status, code, message) -> dict     (an error before anything was sent)

Modules: `openai_chat` (OpenAI Chat Completions), `anthropic_messages` (Anthropic Messages).
"""
