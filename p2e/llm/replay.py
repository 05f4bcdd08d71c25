"""The `replay` provider: answers model calls with the replies recorded on a branch, so a
conversation can be re-run exactly (same texts, same tool calls and ids, same usage) without a
model, e.g. to re-score it, to re-drive it through a changed interpreter, or to fork it later.

A request is answered by the event at `request.seq` of the source branch: it must be an
`AgentReply` by `request.agent` (or a `Critique` written by `request.agent` as a critic).
Anything else means the new run left the recording, and that is a `NotRecorded` error that says
what was asked and what the recording holds there.

Settings: `url` (store URL; default: the same resolution as `p2e.store.connect()`), `namespace`
(default `P2E_NAMESPACE` or `p2e`), `source: {conversation, branch}` (branch: the checked-out one
when omitted). Without `source` the model part names it: `replay/<conversation>` or
`replay/<conversation>/<branch>`.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from p2e.errors import InvalidArgument, P2EError
from p2e.events import AgentReply, Critique, event_agent
from p2e.llm.base import ModelRequest, ModelResponse, OnDelta, split_model
from p2e.store import BranchInfo, EventLog, connect


class NotRecorded(P2EError):
    """The replayed run asked for a reply that the recording does not hold at that position."""

    exit_code = 2


class Source(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    conversation: str = Field(min_length=1)
    branch: str | None = None


class ReplaySettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str | None = None
    namespace: str | None = None
    source: Source | None = None


class ReplayProvider:
    """Serves `AgentReply` events of recorded branches as model responses."""

    def __init__(self, settings: dict[str, Any] | None = None):
        try:
            self.settings = ReplaySettings.model_validate(settings or {})
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidArgument(f"bad replay provider settings: {where}: {first['msg']}") from e
        self._log: EventLog | None = None
        self._lock = threading.Lock()
        self._branches: dict[Source, BranchInfo] = {}

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def source_for(self, model: str) -> Source:
        """The recording to serve: the settings' `source`, else the model part of the name."""
        if self.settings.source is not None:
            return self.settings.source
        conv, _, branch = split_model(model)[1].partition("/")
        return Source(conversation=conv, branch=branch or None)

    async def complete(self, request: ModelRequest, on_delta: OnDelta | None = None) -> ModelResponse:
        """The recorded reply (it does not stream: `on_delta` is not called)."""
        source = self.source_for(request.model)
        return await asyncio.to_thread(self._lookup, source, request)

    # --- sync part, run in a worker thread -----------------------------------------------------

    def _store(self) -> EventLog:
        with self._lock:
            if self._log is None:
                self._log = connect(self.settings.url, self.settings.namespace)
            return self._log

    def _branch(self, source: Source, refresh: bool = False) -> BranchInfo:
        info = self._branches.get(source)
        if info is None or refresh:
            info = self._store().branch(source.conversation, source.branch)
            self._branches[source] = info
        return info

    def _lookup(self, source: Source, request: ModelRequest) -> ModelResponse:
        info = self._branch(source)
        if request.seq >= info.length:  # the recording may still be growing: look once more
            info = self._branch(source, refresh=True)
        where = f"replay of conversation {source.conversation!r} branch {info.name!r}"
        asked = f"a reply by {request.agent!r} at seq {request.seq}"
        if request.seq < 0:
            raise NotRecorded(f"{where}: asked for {asked}; the request carries no seq to look up")
        if request.seq >= info.length:
            holds = f"ends at seq {info.length - 1}" if info.length else "is empty"
            raise NotRecorded(
                f"{where}: asked for {asked}, but the recording {holds}; "
                "the run went past the recorded history (use a live model from here)"
            )
        event = self._store().read(info, request.seq, request.seq + 1)[0]
        if isinstance(event, Critique) and event.critic is not None and event.critic == request.agent:
            return ModelResponse(
                text=event.text,
                model=event.model or request.model,
                usage=event.usage or ModelResponse().usage,
            )
        if not isinstance(event, AgentReply) or event.agent != request.agent:
            agent = event_agent(event)
            what = f"a {event.kind} event" + (f" of {agent!r}" if agent else "")
            if isinstance(event, AgentReply):
                what = f"a reply by {agent!r}"
            raise NotRecorded(
                f"{where}: asked for {asked}, but the recording holds {what} there; "
                "the run diverged from the recording"
            )
        return ModelResponse(
            text=event.text,
            tool_calls=event.tool_calls,
            model=event.model or request.model,
            usage=event.usage or ModelResponse().usage,
        )
