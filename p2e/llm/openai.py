"""The `openai` provider: OpenAI's API, or any OpenAI-compatible server (vLLM, Ollama, llama.cpp).

It speaks chat completions through the official `openai` client (`AsyncOpenAI`), but with the
client's own retries turned off: p2e's retry policy (429, 5xx, timeouts and connection errors,
exponential backoff with jitter, honouring Retry-After) is the one in force, so it is the same
for every server and can be tested. Other 4xx answers are the caller's mistake and fail at once.

Settings (the `openai` section of the providers settings):

- `base_url`: an OpenAI-compatible endpoint, e.g. `http://localhost:8000/v1`; default
  `$OPENAI_BASE_URL`, else OpenAI's own API.
- `api_key_env`: the environment variable holding the key (default `OPENAI_API_KEY`).
  `api_key` (the key itself) also works but is discouraged: settings files end up in repos.
- `timeout_s` (60), `max_retries` (4), `backoff_s` (0.5, the first retry's delay; doubles per
  retry), `max_backoff_s` (60, caps the delay and any Retry-After).
- `prices`: prices that override genai-prices' data, `{model-prefix: [input, output]}` in USD per 1M tokens.
- `max_tokens_param`: `max_tokens` or `max_completion_tokens`; by default the latter for
  OpenAI's reasoning models (o1, o3, o4, gpt-5), which reject `max_tokens`, else the former,
  which every compatible server understands.
- `stream` (true): when the caller asks for the pieces of a reply (`on_delta`), request it with
  `stream: true` and `stream_options: {include_usage: true}`; false for a server that cannot
  stream. A streamed reply is assembled into the same response as an unstreamed one: the text,
  each tool call's arguments joined from their fragments, the usage of the final chunk. A stream
  cut midway is retried like a dropped connection, after telling the caller to forget the pieces.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import random
import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal

import openai
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from p2e.errors import InvalidArgument
from p2e.events import ToolCall, Usage
from p2e.llm import pricing
from p2e.llm.base import (
    Message,
    ModelDelta,
    ModelError,
    ModelRequest,
    ModelResponse,
    OnDelta,
    ToolSpec,
    split_model,
)
from p2e.settings import settings as env_settings

OPENAI_API_URL = "https://api.openai.com/v1"
PLACEHOLDER_KEY = "p2e-no-key"
"""Sent to servers given by `base_url` when no key is set: local servers ignore it, but the
client needs something to send."""

_RETRY_STATUSES = frozenset({408, 429})
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


class OpenAISettings(BaseModel):
    """The `openai` provider's settings; unknown keys are an error (a typo should not pass)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str | None = None
    api_key: str | None = Field(None, repr=False)
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(4, ge=0)
    backoff_s: float = Field(0.5, ge=0)
    max_backoff_s: float = Field(60.0, ge=0)
    prices: dict[str, Any] = Field(default_factory=dict)
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] | None = None
    stream: bool = True


class OpenAIProvider:
    """Serves every `openai/<model>` through one lazily created `AsyncOpenAI` client."""

    name = "openai"

    def __init__(self, settings: Mapping[str, Any] | None = None):
        try:
            self.settings = OpenAISettings.model_validate(dict(settings or {}))
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(settings)'}: {err['msg']}" for err in e.errors()
            )
            raise InvalidArgument(f"invalid settings for model provider openai: {problems}") from None
        pricing.price_table(self.settings.prices)  # a bad price fails at startup, not on a reply
        self.base_url: str | None = self.settings.base_url or env_settings().openai_base_url
        self._client: openai.AsyncOpenAI | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._key: str = ""

    @property
    def endpoint(self) -> str:
        """Where requests go, for messages (credentials in the URL are masked)."""
        return _mask_url(self.base_url or OPENAI_API_URL)

    def _api_key(self, model: str) -> str:
        key = self.settings.api_key or os.environ.get(self.settings.api_key_env) or ""
        if key:
            return key
        if self.base_url:
            return PLACEHOLDER_KEY
        raise ModelError(
            f"no API key for model openai/{model}: set {self.settings.api_key_env} "
            "(or providers.openai.api_key_env to name another variable), "
            "or set a base_url (providers.openai.base_url or OPENAI_BASE_URL) "
            "for an OpenAI-compatible server such as vLLM, Ollama or llama.cpp",
            model=model,
            base_url=self.endpoint,
        )

    def _get_client(self, model: str) -> openai.AsyncOpenAI:
        """The client, created on first use, and again if the event loop changed.

        An httpx connection pool is bound to the loop it was used on; a driver script that calls
        `asyncio.run` twice would otherwise reuse dead connections.
        """
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._key = self._api_key(model)
            self._client = openai.AsyncOpenAI(
                api_key=self._key,
                base_url=self.base_url or OPENAI_API_URL,
                timeout=self.settings.timeout_s,
                max_retries=0,
                # Our own HTTP client, with the SDK's defaults: the SDK's default one closes itself
                # from __del__ by scheduling `aclose()` on whatever loop is running, which fails
                # noisily ("Event loop is closed") for a client left behind by a finished loop.
                http_client=openai.DefaultAsyncHttpxClient(timeout=self.settings.timeout_s),
            )
            self._client_loop = loop
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP connections; call it when done (Ray actors: on shutdown)."""
        if self._client is not None:
            client, self._client, self._client_loop = self._client, None, None
            await client.close()

    async def complete(self, request: ModelRequest, on_delta: OnDelta | None = None) -> ModelResponse:
        _, model = split_model(request.model)
        kwargs = self._request_kwargs(model, request)
        stream = _Stream(on_delta) if on_delta is not None and self.settings.stream else None
        if stream is not None:
            kwargs.update(stream=True, stream_options={"include_usage": True})
        client = self._get_client(model)
        started = time.perf_counter()
        attempt = 0
        while True:
            try:
                if stream is None:
                    completion = await client.chat.completions.create(**kwargs)
                else:
                    stream.start()  # a retry: the caller forgets what the failed attempt sent
                    await stream.read(await client.chat.completions.create(**kwargs))
                break
            except openai.APIStatusError as e:
                retryable = e.status_code in _RETRY_STATUSES or e.status_code >= 500
                failure = ModelError(
                    self._status_message(model, e, attempt + 1, retryable),
                    model=model,
                    base_url=self.endpoint,
                    status=e.status_code,
                    attempts=attempt + 1,
                    retryable=retryable,
                )
                delay = _retry_after(e.response.headers)
            except openai.APIConnectionError as e:  # APITimeoutError is a subclass
                what = (
                    f"timed out after {self.settings.timeout_s:g} s"
                    if isinstance(e, openai.APITimeoutError)
                    else f"could not be reached ({self._redact(_cause(e))})"
                )
                retryable = True
                failure = ModelError(
                    f"model openai/{model} at {self.endpoint} {what}{_after(attempt + 1)}; "
                    "check that the server runs and the base_url is right, or raise timeout_s",
                    model=model,
                    base_url=self.endpoint,
                    attempts=attempt + 1,
                    retryable=True,
                )
                delay = None
            except openai.OpenAIError as e:  # e.g. a reply that is not a chat completion
                raise ModelError(
                    f"model openai/{model} at {self.endpoint} failed: {self._redact(str(e))}",
                    model=model,
                    base_url=self.endpoint,
                    attempts=attempt + 1,
                ) from None
            if not retryable or attempt >= self.settings.max_retries:
                raise failure from None
            await asyncio.sleep(self._backoff(attempt, delay))
            attempt += 1
        latency_ms = (time.perf_counter() - started) * 1000
        if stream is not None:
            return self._reply(model, stream.text, stream.calls(), stream.model, stream.usage, latency_ms)
        return self._response(model, completion, latency_ms)

    def _request_kwargs(self, model: str, request: ModelRequest) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": [chat_message(m) for m in request.messages],
        }
        if request.tools:
            kwargs["tools"] = [chat_tool(t) for t in request.tools]
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.seed is not None:
            kwargs["seed"] = request.seed
        if request.top_p is not None:
            kwargs["top_p"] = request.top_p
        if request.max_tokens is not None:
            param = self.settings.max_tokens_param or (
                "max_completion_tokens" if _is_reasoning_model(model) else "max_tokens"
            )
            kwargs[param] = request.max_tokens
        return kwargs

    def _response(self, model: str, completion: Any, latency_ms: float) -> ModelResponse:
        if not completion.choices:
            raise ModelError(
                f"model openai/{model} at {self.endpoint} returned no choices",
                model=model,
                base_url=self.endpoint,
            )
        message = completion.choices[0].message
        calls = tuple(_tool_call(tc) for tc in (message.tool_calls or ()))
        text = message.content or getattr(message, "refusal", None) or ""
        return self._reply(model, text, calls, completion.model, completion.usage, latency_ms)

    def _reply(
        self,
        model: str,
        text: str,
        calls: tuple[ToolCall, ...],
        served: str | None,
        usage: Any,
        latency_ms: float,
    ) -> ModelResponse:
        prompt = usage.prompt_tokens if usage else 0
        output = usage.completion_tokens if usage else 0
        served = served or model
        cost = pricing.cost(model, prompt, output, self.settings.prices, served=served)
        return ModelResponse(
            text=text,
            tool_calls=calls,
            model=f"openai/{served}",
            usage=Usage(prompt_tokens=prompt, completion_tokens=output, cost_usd=cost, latency_ms=latency_ms),
        )

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Retry-After when the server gave one, else exponential backoff with jitter."""
        cap = self.settings.max_backoff_s
        if retry_after is not None:
            return min(max(retry_after, 0.0), cap)
        delay = min(cap, self.settings.backoff_s * 2**attempt)
        return delay * random.uniform(0.5, 1.0)

    def _status_message(self, model: str, e: openai.APIStatusError, attempts: int, retryable: bool) -> str:
        detail = _error_detail(e)
        hint = {
            401: "check the API key",
            403: "check the key's permissions",
            404: "check the model name and the base_url",
            429: "slow down or raise max_retries",
        }.get(e.status_code, "the server failed; try again later" if retryable else "check the request")
        return self._redact(
            f"model openai/{model} at {self.endpoint} answered HTTP {e.status_code}"
            f"{': ' + detail if detail else ''}{_after(attempts)}; {hint}"
        )

    def _redact(self, text: str) -> str:
        """Never show the key, even if a server echoes it back."""
        if self._key and self._key != PLACEHOLDER_KEY and len(self._key) >= 4:
            text = text.replace(self._key, "***")
        return text


def _is_reasoning_model(model: str) -> bool:
    name = model.lower().rsplit("/", 1)[-1]
    return any(name == p or name.startswith(p + "-") for p in _REASONING_PREFIXES)


def chat_message(m: Message) -> dict[str, Any]:
    """A p2e Message as an OpenAI chat message."""
    if m.role == "tool":
        if not m.tool_call_id:
            raise InvalidArgument("a tool message needs the tool_call_id of the call it answers")
        return {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content}
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.name:
        out["name"] = m.name
    if m.role == "assistant" and m.tool_calls:
        out["content"] = m.content or None
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                # Arguments that were not a JSON object go back as `{}`: some servers (vLLM)
                # parse them to render the chat template; the tool error quotes the raw text.
                "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)},
            }
            for c in m.tool_calls
        ]
    return out


def chat_tool(t: ToolSpec) -> dict[str, Any]:
    """A p2e ToolSpec as an OpenAI function tool (what a request's `tools` holds)."""
    function: dict[str, Any] = {"name": t.name, "parameters": t.parameters}
    if t.description:
        function["description"] = t.description
    return {"type": "function", "function": function}


class _Stream:
    """One streamed reply, assembled from its chunks as OpenAI's own client does: content
    pieces joined, each tool call (by `index`) its id from the first fragment that has one and
    its name and arguments joined; the usage is the last chunk's that carries one (counted once,
    even from servers that send a running count on every chunk)."""

    def __init__(self, on_delta: OnDelta):
        self.on_delta = on_delta
        self.sent = False
        self.start()

    def start(self) -> None:
        if self.sent:
            self.on_delta(ModelDelta(restart=True))
        self.sent = False
        self.parts: list[str] = []
        self.refusal: list[str] = []
        self.slots: dict[int, dict[str, str]] = {}
        self.model: str | None = None
        self.usage: Any = None

    def _send(self, delta: ModelDelta) -> None:
        self.sent = True
        self.on_delta(delta)

    async def read(self, chunks: openai.AsyncStream[Any]) -> None:
        """Read the chunks; a stream cut midway raises the SDK's APIConnectionError (retried)."""
        try:
            async for chunk in chunks:
                self._chunk(chunk)
        finally:
            await chunks.close()

    def _chunk(self, chunk: Any) -> None:
        self.model = chunk.model or self.model
        if chunk.usage is not None:
            self.usage = chunk.usage
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            delta = choice.delta
            if delta.content:
                self.parts.append(delta.content)
                self._send(ModelDelta(text=delta.content))
            if getattr(delta, "refusal", None):
                self.refusal.append(delta.refusal)
                self._send(ModelDelta(text=delta.refusal))
            for tc in delta.tool_calls or ():
                slot = self.slots.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                name = (tc.function.name if tc.function else None) or ""
                args = (tc.function.arguments if tc.function else None) or ""
                slot["id"] = slot["id"] or tc.id or ""
                slot["name"] += name
                slot["arguments"] += args
                self._send(ModelDelta(tool=tc.index, id=tc.id or "", name=name, arguments=args))

    @property
    def text(self) -> str:
        return "".join(self.parts) or "".join(self.refusal)

    def calls(self) -> tuple[ToolCall, ...]:
        return tuple(_parse_call(s["id"], s["name"], s["arguments"]) for _, s in sorted(self.slots.items()))


def _tool_call(tc: Any) -> ToolCall:
    """An OpenAI tool call as a p2e ToolCall; arguments that are not a JSON object are kept raw."""
    if getattr(tc, "type", "function") == "custom":
        name, raw = tc.custom.name, tc.custom.input
    else:
        name, raw = tc.function.name, tc.function.arguments
    return _parse_call(tc.id, name, raw)


def _parse_call(call_id: str | None, name: str, raw: str | None) -> ToolCall:
    call_id = call_id or f"call_{uuid.uuid4().hex[:24]}"
    if raw is None or not raw.strip():  # some local servers send "" for a call without arguments
        return ToolCall(id=call_id, name=name)
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        return ToolCall(id=call_id, name=name, arguments=parsed)
    return ToolCall(id=call_id, name=name, invalid_arguments=raw)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked us to wait: `retry-after-ms`, `retry-after` (seconds or date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when.timestamp() - time.time()


def _error_detail(e: openai.APIStatusError) -> str:
    body = e.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:500]
        if isinstance(inner, str):
            return inner[:500]
    return e.message[:500] if e.message else ""


def _cause(e: BaseException) -> str:
    cause = e.__cause__ or e.__context__
    return f"{type(cause).__name__}: {cause}" if cause else str(e)


def _after(attempts: int) -> str:
    return f" (after {attempts} attempts)" if attempts > 1 else ""


def _mask_url(url: str) -> str:
    """`https://user:secret@host/v1` -> `https://***@host/v1`."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
