"""A small OpenAI-compatible chat-completions server, so tests run the real `openai` client over HTTP.

It runs on aiohttp in a background thread with its own event loop, on 127.0.0.1 and a free port.
`POST /v1/chat/completions` answers from a queue of scripted replies, then (queue empty) from an
optional responder callable, and records every request it received. A request with
`stream: true` gets the reply as server-sent events, as OpenAI sends them: `chat.completion.chunk`
objects (the role first, then `delta.content` pieces, then each tool call's id and name followed
by `delta.tool_calls[i].function.arguments` fragments, then an empty delta with the
finish_reason), a usage chunk with no choices when `stream_options.include_usage` is set, and
`data: [DONE]`.

    with OpenAIServer() as server:
        server.push(Reply(status=429, retry_after=0.05), Reply(text="hi"))
        server.push(Reply(tool_calls=[("add", '{"a": 1}'), ("echo", "not json")]))
        server.responder = lambda body: Reply(text=body["messages"][-1]["content"].upper())
        ... OpenAIProvider({"base_url": server.url}) ...
        server.requests[0]["temperature"]          # what the client sent
        server.request_headers[0]["authorization"]

Tests use the `openai_server` fixture (tests/conftest.py), which resets it between tests.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web


@dataclass
class Reply:
    """One scripted answer.

    `status` set (and not 200): an OpenAI-style error with that HTTP status instead of a reply;
    `retry_after` adds a Retry-After header (seconds). `delay_s` waits before answering (to
    trigger client timeouts). `tool_calls` are (name, raw arguments text) pairs, sent verbatim so
    tests can send arguments that are not JSON.
    """

    text: str | None = ""
    tool_calls: Sequence[tuple[str, str]] = ()
    status: int = 200
    retry_after: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    error: str = "scripted error"
    delay_s: float = 0.0
    prompt_tokens: int = 10
    completion_tokens: int = 5
    model: str | None = None
    """The model name the reply reports; default: the one requested."""
    finish_reason: str | None = None
    raw: dict[str, Any] | None = None
    """A whole response body to send as-is (for malformed-reply tests)."""
    chunk_chars: int = 4
    """Streamed: the size of the pieces content and tool-call arguments are cut into."""
    chunk_delay_s: float = 0.0
    """Streamed: the wait before each chunk."""
    break_after: int | None = None
    """Streamed: drop the connection after this many chunks (a stream cut mid-reply)."""


Responder = Callable[[dict[str, Any]], "Reply | str"]


class OpenAIServer:
    """See the module docstring. Thread-safe enough for tests: the queue is a deque."""

    def __init__(self, responder: Responder | None = None):
        self.responder = responder
        self.queue: collections.deque[Reply] = collections.deque()
        self.requests: list[dict[str, Any]] = []
        self.request_headers: list[dict[str, str]] = []
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._port = 0

    # scripting and inspection

    def push(self, *replies: Reply | str) -> None:
        """Queue replies, answered in order; a str is a text reply."""
        self.queue.extend(Reply(text=r) if isinstance(r, str) else r for r in replies)

    def reset(self) -> None:
        self.queue.clear()
        self.requests.clear()
        self.request_headers.clear()
        self.responder = None
        self._ids = itertools.count(1)  # the same script gets the same reply and call ids

    @property
    def url(self) -> str:
        """The base_url to give the client."""
        if not self._port:
            raise RuntimeError("the server is not started")
        return f"http://127.0.0.1:{self._port}/v1"

    # lifecycle

    def start(self) -> OpenAIServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="openai-test-server", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(sock), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._loop.close()
        self._loop, self._thread, self._runner, self._port = None, None, None, 0

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # serving

    async def _serve(self, sock: socket.socket) -> None:
        from aiohttp import web  # imported here: conftest imports this module for every test run

        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        # handler_cancellation: a client that timed out stops its delayed handler, so a stop()
        # right after a timeout test does not wait for the delay.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    def _next(self, body: dict[str, Any]) -> Reply:
        if self.queue:
            return self.queue.popleft()
        if self.responder is not None:
            r = self.responder(body)
            return Reply(text=r) if isinstance(r, str) else r
        # 400, not 5xx: a test that forgot to script a reply fails at once instead of retrying
        return Reply(status=400, error="openai test server: no scripted reply left and no responder")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        body = await request.json()
        self.requests.append(body)
        self.request_headers.append({k.lower(): v for k, v in request.headers.items()})
        reply = self._next(body)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        headers = dict(reply.headers)
        if reply.retry_after is not None:
            headers["Retry-After"] = f"{reply.retry_after:g}"
        if reply.raw is not None:
            return web.json_response(reply.raw, status=reply.status, headers=headers)
        if reply.status != 200:
            error = {"message": reply.error, "type": "test_error", "param": None, "code": str(reply.status)}
            return web.json_response({"error": error}, status=reply.status, headers=headers)
        if body.get("stream"):
            return await self._stream(request, body, reply, headers)
        return web.json_response(self._completion(body, reply), headers=headers)

    async def _stream(
        self, request: web.Request, body: dict[str, Any], reply: Reply, headers: dict[str, str]
    ) -> web.StreamResponse:
        from aiohttp import web

        response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, chunk in enumerate(self._chunks(body, reply)):
            if reply.break_after is not None and i >= reply.break_after:
                assert request.transport is not None
                request.transport.close()  # no terminating chunk: the client sees a cut stream
                return response
            if reply.chunk_delay_s:
                await asyncio.sleep(reply.chunk_delay_s)
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _chunks(self, body: dict[str, Any], reply: Reply) -> list[dict[str, Any]]:
        n = next(self._ids)
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {
            "id": f"chatcmpl-test-{n}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": reply.model or body.get("model", "test-model"),
            "system_fingerprint": None,
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**base, "choices": [choice], **({"usage": None} if usage else {})}

        def pieces(text: str) -> list[str]:
            size = max(reply.chunk_chars, 1)
            return [text[i : i + size] for i in range(0, len(text), size)]

        out = [chunk({"role": "assistant", "content": "" if reply.text is not None else None})]
        out += [chunk({"content": p}) for p in pieces(reply.text or "")]
        for i, (name, args) in enumerate(reply.tool_calls):
            call = {"index": i, "id": f"call_{n}_{i}", "type": "function"}
            out.append(chunk({"tool_calls": [{**call, "function": {"name": name, "arguments": ""}}]}))
            out += [chunk({"tool_calls": [{"index": i, "function": {"arguments": p}}]}) for p in pieces(args)]
        out.append(chunk({}, reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")))
        if usage:
            total = reply.prompt_tokens + reply.completion_tokens
            counts = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}
            out.append({**base, "choices": [], "usage": {**counts, "total_tokens": total}})
        return out

    def _completion(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        n = next(self._ids)
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        if reply.tool_calls:
            message["tool_calls"] = [
                {"id": f"call_{n}_{i}", "type": "function", "function": {"name": name, "arguments": args}}
                for i, (name, args) in enumerate(reply.tool_calls)
            ]
        finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
        return {
            "id": f"chatcmpl-test-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": reply.model or body.get("model", "test-model"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": {
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
                "total_tokens": reply.prompt_tokens + reply.completion_tokens,
            },
        }
