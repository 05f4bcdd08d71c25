"""A small OpenAI-compatible chat-completions server, so tests run the real `openai` client over HTTP.

It runs on aiohttp in a background thread with its own event loop, on 127.0.0.1 and a free port.
`POST /v1/chat/completions` answers from a queue of scripted replies, then (queue empty) from an
optional responder callable, and records every request it received.

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

    async def _chat(self, request: web.Request) -> web.Response:
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
        return web.json_response(self._completion(body, reply), headers=headers)

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
