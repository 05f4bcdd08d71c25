"""The branching event log on a Redis-protocol server.

Every multi-key write is one Lua script (create, append, fork), so a command that dies halfway
leaves nothing half-written. Reads of a history are one pipelined round trip whatever the depth
of the fork line. See `keys.py` for the layout.
"""

from __future__ import annotations

import contextlib
import gc
import json
import time
import uuid
from collections.abc import Iterator, Sequence
from importlib.resources import files

import redis
from pydantic import BaseModel, ValidationError
from redis.typing import EncodableT

from p2e.errors import (
    Conflict,
    CorruptData,
    InvalidArgument,
    SequenceOutOfRange,
    StoreUnavailable,
    UnknownBranch,
    UnknownConversation,
)
from p2e.events import Event, encode, event_adapter, event_agent, events_adapter
from p2e.prefix import ENOUGH, first, match_pattern
from p2e.redact import default_redactor, register_secret
from p2e.store.keys import NAME_RE, Keys
from p2e.store.replies import as_bytes, as_hash, as_list
from p2e.store.url import options


class Segment(BaseModel):
    """Seqs lo..hi-1 of a history, stored in `branch`'s list at index seq - offset."""

    branch: str
    lo: int
    hi: int
    offset: int

    def clip(self, start: int, end: int) -> Segment | None:
        lo, hi = max(self.lo, start), min(self.hi, end)
        return Segment(branch=self.branch, lo=lo, hi=hi, offset=self.offset) if lo < hi else None


class BranchInfo(BaseModel):
    conversation: str
    name: str
    parent: str | None
    fork_at: int
    length: int
    created: float
    lineage: list[Segment]

    @property
    def own(self) -> Segment:
        return Segment(branch=self.name, lo=self.fork_at, hi=self.length, offset=self.fork_at)

    @property
    def segments(self) -> list[Segment]:
        return [*self.lineage, self.own]


class ConversationInfo(BaseModel):
    id: str
    name: str
    root: str
    created: float
    active: str
    events: int
    branches: int = 0
    note: str = ""
    """Why the conversation was set aside, if it was (an episode attempt whose actor died)."""


def lua_script(name: str) -> str:
    """The text of one of the store's Lua scripts (`p2e/store/lua/`)."""
    return files("p2e.store").joinpath("lua", f"{name}.lua").read_text()


def new_id() -> str:
    return uuid.uuid4().hex[:12]


def check_name(name: str, what: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"{what} name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


class EventLog:
    """Conversations, branches and their events in one Redis/Valkey database."""

    def __init__(self, url: str, namespace: str = "p2e", client: redis.Redis | None = None):
        self.url = url
        self.keys = Keys(namespace)
        if client is None:
            options(url)  # a URL redis-py would refuse on first use: one line that says why, now
            client = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)
        self.r = client
        password = self.r.connection_pool.connection_kwargs.get("password")
        if password:  # the URL's password masked in whatever this process writes (actors too)
            register_secret(password)
        self._append = self.r.register_script(lua_script("append"))
        self._fork = self.r.register_script(lua_script("fork"))
        self._create = self.r.register_script(lua_script("create"))

    def close(self) -> None:
        self.r.close()

    @contextlib.contextmanager
    def guard(self, *keys: str) -> Iterator[None]:
        """Turn redis errors into p2e errors that name the URL, or the key(s) involved."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError, ConnectionError) as e:
            raise StoreUnavailable(self.url, e) from e
        except redis.ResponseError as e:
            msg = str(e)
            if "WRONGTYPE" in msg and "P2E_WRONGTYPE" not in msg:
                where = " or ".join(keys) if keys else f"a key under {self.keys.ns}:"
                raise CorruptData(where, "a key of the wrong type (" + msg + ")") from e
            raise

    def ping(self) -> None:
        with self.guard():
            self.r.ping()

    # --- conversations -------------------------------------------------------------------------

    def create_conversation(
        self, root: str, name: str | None = None, branch: str = "main", cid: str | None = None
    ) -> ConversationInfo:
        """A new conversation with one empty branch. `cid` lets a caller choose the id up front
        (to route the conversation to a host by id); it must be unused."""
        info = new_conversation(root, name, branch, cid)
        keys, args = create_call(self.keys, info)
        with self.guard():
            try:
                self._create(keys=keys, args=args)
            except redis.ResponseError as e:
                raise create_error(e) from e
        return info

    def resolve(self, conv: str) -> str:
        """A conversation id from an id or a name."""
        with self.guard(self.keys.conv(conv), self.keys.names):
            if self.r.exists(self.keys.conv(conv)):
                return conv
            cid = self.r.hget(self.keys.names, conv)
        if cid is None:
            raise UnknownConversation(conv)
        try:
            return as_bytes(cid).decode()
        except UnicodeDecodeError as e:
            raise CorruptData(self.keys.names, f"the entry for {conv!r} is not text") from e

    def conversation(self, conv: str) -> ConversationInfo:
        cid = self.resolve(conv)
        with self.guard(self.keys.conv(cid), self.keys.branches(cid)):
            p = self.r.pipeline(transaction=False)
            p.hgetall(self.keys.conv(cid))
            p.zcard(self.keys.branches(cid))
            raw, n = p.execute()
        return self._conv_info(cid, raw, n)

    def matching(self, prefix: str, limit: int | None = ENOUGH) -> dict[str, str]:
        """Ids and names that begin with `prefix` -> their conversation id, at most `limit`
        conversations (None: all). A server-side scan of the id and name indexes (O(n) in
        conversations; no record or event is read); see `p2e.prefix`."""
        pattern = match_pattern(prefix)
        out: dict[str, str] = {}
        with self.guard(self.keys.convs, self.keys.names):
            for member, _ in self.r.zscan_iter(self.keys.convs, match=pattern, count=1000):
                cid = member.decode(errors="replace")
                out[cid] = cid
                if limit is not None and len(set(out.values())) >= limit:
                    return out
            for name, cid_raw in self.r.hscan_iter(self.keys.names, match=pattern, count=1000):
                out[name.decode(errors="replace")] = cid_raw.decode(errors="replace")
                if limit is not None and len(set(out.values())) >= limit:
                    return out
        return out

    def mark(self, conv: str, note: str) -> None:
        """Leave a note on a conversation (its events are untouched): `conversation show` has it."""
        cid = self.resolve(conv)
        self.r.hset(self.keys.conv(cid), "note", default_redactor().text(note))  # it may quote an error

    def free_name(self, base: str) -> str:
        """`base` if no conversation has that name or id yet, else the first free `base-N`."""
        convs = self.conversations()
        taken = {c.name for c in convs} | {c.id for c in convs}
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        return name

    def conversations(self) -> list[ConversationInfo]:
        """Every conversation, oldest first. Entries that do not parse raise `CorruptData`."""
        infos: list[ConversationInfo] = []
        for row in self.conversation_rows():
            if isinstance(row, CorruptData):
                raise row
            infos.append(row)
        return infos

    def conversation_ids(self, since: float | None = None) -> list[str]:
        """Ids of the conversations created at or after `since` (all by default), newest first:
        the id index only (O(n) in ids), no record read."""
        with self.guard(self.keys.convs):
            raw = as_list(
                self.r.zrevrangebyscore(self.keys.convs, "+inf", "-inf" if since is None else since)
            )
        return [i.decode(errors="replace") for i in raw]

    def conversation_rows(self, ids: list[str] | None = None) -> list[ConversationInfo | CorruptData]:
        """The conversations `ids` (default: every one, oldest first); an entry that does not parse
        is its `CorruptData` in place, so a listing can show the healthy ones and name the broken
        ones."""
        with self.guard(self.keys.convs, self.keys.conv_pattern):
            if ids is None:
                ids = [i.decode(errors="replace") for i in as_list(self.r.zrange(self.keys.convs, 0, -1))]
            p = self.r.pipeline(transaction=False)
            for cid in ids:
                p.hgetall(self.keys.conv(cid))
                p.zcard(self.keys.branches(cid))
            raw = p.execute()
        rows: list[ConversationInfo | CorruptData] = []
        for i, cid in enumerate(ids):
            try:
                rows.append(self._conv_info(cid, raw[2 * i], raw[2 * i + 1]))
            except CorruptData as e:
                rows.append(e)
        return rows

    def _conv_info(self, cid: str, raw: dict[bytes, bytes], branches: int) -> ConversationInfo:
        key = self.keys.conv(cid)
        if not raw:
            raise CorruptData(key, "listed in the conversation index but has no record")
        try:
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            return ConversationInfo.model_validate({**fields, "branches": branches})
        except (ValidationError, UnicodeDecodeError, TypeError) as e:
            raise CorruptData(key, f"not a conversation record ({e.__class__.__name__})") from e

    # --- branches ------------------------------------------------------------------------------

    def branch(self, conv: str, name: str | None = None) -> BranchInfo:
        """A branch of a conversation; the checked-out one when `name` is None."""
        cid = self.resolve(conv)
        if name is None:
            with self.guard(self.keys.conv(cid)):
                active = self.r.hget(self.keys.conv(cid), "active")
            if active is None:
                raise CorruptData(self.keys.conv(cid), "no checked-out branch")
            name = as_bytes(active).decode(errors="replace")
        with self.guard(self.keys.branch(cid, name)):
            raw = as_hash(self.r.hgetall(self.keys.branch(cid, name)))
        if not raw:
            raise UnknownBranch(conv, name, [b.name for b in self.branches(conv)])
        return self._branch_info(cid, name, raw)

    def branches(self, conv: str) -> list[BranchInfo]:
        cid = self.resolve(conv)
        with self.guard(self.keys.branches(cid), self.keys.branch(cid, "*")):
            members = as_list(self.r.zrange(self.keys.branches(cid), 0, -1))
            names = [n.decode(errors="replace") for n in members]
            p = self.r.pipeline(transaction=False)
            for n in names:
                p.hgetall(self.keys.branch(cid, n))
            raws = p.execute()
        return [self._branch_info(cid, n, raw) for n, raw in zip(names, raws, strict=True)]

    def branches_matching(self, conv: str, prefix: str) -> list[str]:
        """Names of the conversation's branches that begin with `prefix` (a few: see `p2e.prefix`);
        just `prefix` when a branch has that name."""
        key = self.keys.branches(self.resolve(conv))
        with self.guard(key):
            if self.r.zscore(key, prefix) is not None:
                return [prefix]
            found = self.r.zscan_iter(key, match=match_pattern(prefix), count=1000)
            return first(m.decode(errors="replace") for m, _ in found)

    def _branch_info(self, cid: str, name: str, raw: dict[bytes, bytes]) -> BranchInfo:
        key = self.keys.branch(cid, name)
        try:
            f = {k.decode(): v.decode() for k, v in raw.items()}
            return BranchInfo(
                conversation=cid,
                name=name,
                parent=f["parent"] or None,
                fork_at=int(f["fork_at"]),
                length=int(f["length"]),
                created=float(f["created"]),
                lineage=[
                    Segment(branch=s[0], lo=s[1], hi=s[2], offset=s[3]) for s in json.loads(f["lineage"])
                ],
            )
        except (KeyError, ValueError, IndexError, TypeError, ValidationError, UnicodeDecodeError) as e:
            raise CorruptData(key, f"not a branch record ({e.__class__.__name__}: {e})") from e

    def fork(self, conv: str, parent: str, at: int, name: str, checkout: bool = False) -> BranchInfo:
        """A new branch holding the parent's first `at` events. O(1): no event is copied."""
        check_name(name, "branch")
        p = self.branch(conv, parent)
        if not 0 <= at <= p.length:
            raise SequenceOutOfRange(at, p.length + 1, "fork point; it")
        lineage = [c for s in p.segments if (c := s.clip(0, at))]
        created = time.time()
        cid, k = p.conversation, self.keys
        with self.guard():
            try:
                self._fork(
                    keys=[k.branch(cid, parent), k.branch(cid, name), k.branches(cid), k.conv(cid)],
                    args=[
                        at,
                        name,
                        parent,
                        repr(created),
                        json.dumps([[s.branch, s.lo, s.hi, s.offset] for s in lineage]),
                        "1" if checkout else "0",
                    ],
                )
            except redis.ResponseError as e:
                if "P2E_EXISTS" in str(e):
                    raise InvalidArgument(f"conversation {conv!r} already has a branch {name!r}") from e
                if "P2E_RANGE" in str(e):  # the parent shrank? impossible; but be exact
                    raise SequenceOutOfRange(at, int(str(e).split()[-1]) + 1, "fork point; it") from e
                raise
        return BranchInfo(
            conversation=cid,
            name=name,
            parent=parent,
            fork_at=at,
            length=at,
            created=created,
            lineage=lineage,
        )

    def checkout(self, conv: str, name: str) -> BranchInfo:
        info = self.branch(conv, name)
        with self.guard():
            self.r.hset(self.keys.conv(info.conversation), "active", name)
        return info

    # --- events --------------------------------------------------------------------------------

    def append(self, conv: str, branch: str, events: Sequence[Event], expected: int | None = None) -> int:
        """Append events atomically (all or nothing, in one script); return the seq of the first.
        `expected` is the length the branch must have (optimistic concurrency): a mismatch raises
        `Conflict` and writes nothing."""
        return self.append_to(self.resolve(conv), branch, events, expected, shown_as=conv)

    def append_to(
        self,
        cid: str,
        branch: str,
        events: Sequence[Event],
        expected: int | None = None,
        shown_as: str | None = None,
    ) -> int:
        """`append` for a known conversation id (the hot path: one round trip)."""
        if not events:
            raise InvalidArgument("nothing to append")
        keys, args = append_call(self.keys, cid, branch, events, expected)
        with self.guard(*keys):
            try:
                result = self._append(keys=keys, args=args)
            except redis.ResponseError as e:
                err = append_error(e, shown_as or cid, branch)
                if isinstance(err, UnknownBranch):
                    err = UnknownBranch(shown_as or cid, branch, [b.name for b in self.branches(cid)])
                raise err from e
        return append_outcome(result, cid, branch, expected)[0]

    def history(
        self, conv: str, branch: str | None = None, start: int = 0, end: int | None = None
    ) -> list[Event]:
        """Events start..end-1 of a branch, inherited ones included."""
        return self.read(self.branch(conv, branch), start, end)

    def read(self, info: BranchInfo, start: int = 0, end: int | None = None) -> list[Event]:
        end = info.length if end is None else min(end, info.length)
        if start < 0:
            raise SequenceOutOfRange(start, info.length)
        segs = [c for s in info.segments if (c := s.clip(start, end))]
        if not segs:
            return []
        with self.guard(*(self.keys.events(info.conversation, s.branch) for s in segs)):
            p = self.r.pipeline(transaction=False)
            for s in segs:
                p.lrange(self.keys.events(info.conversation, s.branch), s.lo - s.offset, s.hi - s.offset - 1)
            parts = p.execute()
        raws = [raw for part in parts for raw in part]
        expected_n = sum(s.hi - s.lo for s in segs)
        if len(raws) != expected_n:
            raise CorruptData(
                self.keys.events(info.conversation, info.name),
                f"expected {expected_n} events in seqs {start}..{end - 1}, found {len(raws)}",
            )
        return self._decode(info, raws, start)

    def _decode(self, info: BranchInfo, raws: list[bytes], start: int) -> list[Event]:
        gc_was_on = gc.isenabled()
        gc.disable()  # thousands of new models would set off full collections mid-parse
        try:  # one parse for the whole history: the fast path
            events = events_adapter.validate_json(b"[" + b",".join(raws) + b"]")
            if len(events) == len(raws):
                return self._check_seqs(info, events, start)
        except ValidationError:
            pass
        finally:
            if gc_was_on:
                gc.enable()
        for i, raw in enumerate(raws):  # something is off: find the first bad entry, to name it
            try:
                event_adapter.validate_json(raw)
            except ValidationError as e:
                raise CorruptData(
                    f"{self.keys.events(info.conversation, info.name)} (seq {start + i})",
                    f"not one p2e event: {e.errors()[0]['msg']}",
                ) from e
        raise CorruptData(self.keys.events(info.conversation, info.name), "entries do not parse as events")

    def _check_seqs(self, info: BranchInfo, events: list[Event], start: int) -> list[Event]:
        for i, e in enumerate(events):
            if e.seq != start + i:
                raise CorruptData(
                    self.keys.events(info.conversation, info.name),
                    f"event at position {start + i} carries seq {e.seq}",
                )
        return events

    def event(self, conv: str, branch: str | None, seq: int) -> Event:
        info = self.branch(conv, branch)
        if not 0 <= seq < info.length:
            raise SequenceOutOfRange(seq, info.length)
        return self.read(info, seq, seq + 1)[0]

    def owner(self, info: BranchInfo, seq: int) -> str:
        """The branch that stores event `seq` of `info`'s history (its canonical home)."""
        for s in info.segments:
            if s.lo <= seq < s.hi:
                return s.branch
        raise SequenceOutOfRange(seq, info.length)

    # --- other modules' keys ------------------------------------------------------------------
    # One guarded read or write of a key laid out in keys.py (the ledger's settings, a partial
    # reply, a search tree, a conversation's notes...): its owner need not reach the client.

    def get(self, key: str) -> bytes | None:
        with self.guard(key):
            raw = self.r.get(key)
        return None if raw is None else as_bytes(raw)

    def put(self, key: str, value: str | bytes) -> None:
        with self.guard(key):
            self.r.set(key, value)

    def exists(self, key: str) -> bool:
        with self.guard():
            return bool(self.r.exists(key))

    def fields(self, key: str) -> dict[bytes, bytes]:
        """A hash's fields (empty if there is no such key)."""
        with self.guard(key):
            return as_hash(self.r.hgetall(key))

    def items(self, key: str) -> list[bytes]:
        """A list's items (empty if there is no such key)."""
        with self.guard(key):
            return as_list(self.r.lrange(key, 0, -1))

    def push(self, key: str, value: str | bytes, limit: int) -> int | None:
        """Append `value` to the list at `key` unless it holds `limit` items already: its new
        length, or None when full."""
        with self.guard(key):
            if self.r.llen(key) >= limit:
                return None
            return int(self.r.rpush(key, value))

    def clear_list(self, key: str) -> int:
        """Delete the list at `key`: how many items it held."""
        with self.guard(key):
            p = self.r.pipeline(transaction=True)
            p.llen(key)
            p.delete(key)
            count, _ = p.execute()
        return int(count)

    # --- snapshots -----------------------------------------------------------------------------

    def save_snapshot(self, cid: str, branch: str, length: int, state_json: bytes) -> None:
        with self.guard():
            self.r.hset(self.keys.snapshots(cid, branch), str(length), state_json)

    def load_snapshot(self, info: BranchInfo, upto: int | None = None) -> tuple[int, bytes] | None:
        """The newest snapshot valid for `info`'s history up to `upto` events: (length, state)."""
        upto = info.length if upto is None else upto
        segs = [c for s in info.segments if (c := s.clip(0, upto))]
        with self.guard(*(self.keys.snapshots(info.conversation, s.branch) for s in segs)):
            p = self.r.pipeline(transaction=False)
            for s in segs:
                p.hkeys(self.keys.snapshots(info.conversation, s.branch))
            found = p.execute()
            best: tuple[int, str] | None = None
            for s, keys in zip(segs, found, strict=True):
                for raw in keys:
                    if not raw.isdigit():  # (bytes: ASCII digits only)
                        key = self.keys.snapshots(info.conversation, s.branch)
                        raise CorruptData(key, f"field {raw[:40]!r} is not a length")
                    n = int(raw)
                    if s.lo < n <= s.hi and (best is None or n > best[0]):
                        best = (n, s.branch)
            if best is None:
                return None
            data = self.r.hget(self.keys.snapshots(info.conversation, best[1]), str(best[0]))
        return (best[0], as_bytes(data)) if data is not None else None

    # --- artifact index ------------------------------------------------------------------------

    def indexed(self, conv: str, kind: str | None = None, agent: str | None = None) -> list[tuple[str, int]]:
        """Refs (branch, seq) of a conversation's events of one kind and/or agent, in append order."""
        cid = self.resolve(conv)
        keys = [self.keys.by_kind(cid, kind)] if kind else []
        keys += [self.keys.by_agent(cid, agent)] if agent else []
        with self.guard(*keys):
            p = self.r.pipeline(transaction=False)
            if kind:
                p.lrange(self.keys.by_kind(cid, kind), 0, -1)
            if agent:
                p.lrange(self.keys.by_agent(cid, agent), 0, -1)
            lists = p.execute()
        sets = [[_ref(key, x) for x in lst] for key, lst in zip(keys, lists, strict=True)]
        if len(sets) == 2:
            keep = set(sets[1])
            return [r for r in sets[0] if r in keep]
        return sets[0] if sets else []

    def index_keys(self, conv: str) -> list[str]:
        """The kinds and agents a conversation's index knows (`kind:K`, `agent:A`)."""
        cid = self.resolve(conv)
        prefix = self.keys.index_prefix(cid)
        with self.guard():
            return sorted(k.decode()[len(prefix) :] for k in self.r.scan_iter(match=prefix + "*", count=1000))


def append_call(
    keys: Keys, cid: str, branch: str, events: Sequence[Event], expected: int | None
) -> tuple[list[str], list[EncodableT]]:
    """KEYS and ARGV of the append script (shared by the sync log and the async group commit)."""
    args: list[EncodableT] = ["" if expected is None else expected, keys.index_prefix(cid), branch]
    mask = default_redactor().data  # an API key echoed by a model or a tool is never stored
    for e in events:
        args += [mask(encode(e)), e.kind, event_agent(e) or ""]
    return [keys.branch(cid, branch), keys.events(cid, branch), keys.conv(cid)], args


def new_conversation(root: str, name: str | None, branch: str, cid: str | None) -> ConversationInfo:
    """What a new conversation will be (names checked, an id chosen), before it is stored."""
    cid = check_name(cid, "conversation id") if cid else new_id()
    name = check_name(name, "conversation") if name else cid
    check_name(branch, "branch")
    return ConversationInfo(
        id=cid, name=name, root=root, created=time.time(), active=branch, events=0, branches=1
    )


def create_call(keys: Keys, info: ConversationInfo) -> tuple[list[str], list[EncodableT]]:
    """KEYS and ARGV of the create script (shared by the sync log and the async group commit)."""
    cid, b = info.id, info.active
    return (
        [
            keys.convs,
            keys.names,
            keys.conv(cid),
            keys.branches(cid),
            keys.branch(cid, b),
            keys.conv(info.name),
        ],
        [cid, info.name, info.root, repr(info.created), b],
    )


def create_error(e: redis.ResponseError) -> Exception:
    if "P2E_NAME_TAKEN" in str(e):
        taken = str(e).split("P2E_NAME_TAKEN ", 1)[1]
        return InvalidArgument(
            f"a conversation named (or with the id) {taken!r} exists already; pick another name"
        )
    return e


def append_outcome(result: list[int], cid: str, branch: str, expected: int | None) -> tuple[int, int]:
    """(first seq, new length) from the script's answer; `Conflict` if the branch had moved on."""
    start, end = int(result[0]), int(result[1])
    if start == -1:
        raise Conflict(
            f"branch {branch!r} of {cid} is at {end} events, not the expected {expected}: "
            "another writer appended first; reload the conversation and retry"
        )
    return start, end


def append_error(e: redis.ResponseError, conv: str, branch: str) -> Exception:
    """The p2e error for a failed append script (shared by the sync log and the group commit)."""
    msg = str(e)
    if "P2E_NO_BRANCH" in msg:
        return UnknownBranch(conv, branch)
    if "P2E_WRONGTYPE" in msg:
        key, _, what = msg.split("P2E_WRONGTYPE ", 1)[1].partition(" is a ")
        return CorruptData(key, f"a key of the wrong type (a {what} where p2e keeps something else)")
    return e


def _ref(key: str, raw: bytes) -> tuple[str, int]:
    b, _, seq = raw.decode(errors="replace").rpartition(":")
    if not b or not seq.isdecimal():
        raise CorruptData(key, f"entry {raw[:40]!r} is not a ref BRANCH:SEQ")
    return b, int(seq)
