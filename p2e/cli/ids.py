"""Every id a command takes may be given by its first characters: `p2e conversation show e386`.

The commands resolve what they are given here, once, before anything else: an exact id or name
is taken as it is; else the one id or name that begins with it; several are an error that names
a few and asks for more characters; none is a `NotFound` that says where to look. The store is
asked through its indexes only (`p2e.prefix`), never through the records or events.
"""

from __future__ import annotations

from collections.abc import Callable

import typer

from p2e.errors import NotFound, UnknownBranch, UnknownConversation
from p2e.prefix import pick
from p2e.store import EventLog

PREFIX = "any unique start of one will do"


def conversation(log: EventLog, given: str) -> str:
    """The conversation id or name `given` stands for (a name or id given whole is kept)."""
    try:
        log.resolve(given)
        return given
    except UnknownConversation:
        pass
    found = log.matching(given) if given else {}
    if not found:
        raise UnknownConversation(given)
    by_conv: dict[str, str] = {}
    for match, cid in found.items():  # matched by its id and by its name: one candidate
        by_conv.setdefault(cid, match)
    return pick(given, "conversation", list(by_conv.values()), "see `p2e conversation list`")


def branch(log: EventLog, conv: str, given: str | None) -> str | None:
    """The branch of `conv` that `given` stands for (None: the checked-out one, left as None)."""
    if given is None:
        return None
    found = log.branches_matching(conv, given) if given else []
    if not found:
        raise UnknownBranch(conv, given, [b.name for b in log.branches(conv)][:20])
    return pick(given, f"branch of {conv}", found, f"see `p2e conversation branches {conv}`")


def rollout(log: EventLog, given: str) -> str:
    """The rollout id `given` stands for."""
    from p2e.rollouts.store import RolloutStore

    store = RolloutStore(log)
    found = store.matching(given) if given else []
    if not found:
        store.get(given)  # its NotFound names the recent rollouts
    return pick(given, "rollout", found, "see `p2e rollout list`")


def conversation_or_rollout(log: EventLog, given: str) -> str:
    """For `p2e view`: an exact conversation or rollout as it is, else the one conversation
    (id or name) or rollout id that begins with `given`; nothing found: `given`, for the
    command to say what it looked for."""
    from p2e.rollouts.store import RolloutStore

    rollouts = RolloutStore(log).matching(given) if given else []
    try:
        log.resolve(given)
        return given
    except UnknownConversation:
        if given in rollouts:
            return given
    convs = {cid: match for match, cid in log.matching(given).items()} if given else {}
    found = [*convs.values(), *rollouts]
    return pick(given, "conversation or rollout", found, "") if found else given


def ref(log: EventLog, given: str) -> str:
    """A ref `CONV/BRANCH[/SEQ]` with its conversation and branch written out; a ref that names
    nothing is left as it is, for the command's error to name it whole."""
    parts = given.split("/")
    if len(parts) not in (2, 3) or not all(parts[:2]):
        return given
    try:
        conv = conversation(log, parts[0])
        parts[:2] = [conv, branch(log, conv, parts[1]) or parts[1]]
    except NotFound:
        return given
    return "/".join(parts)


def _resolving(resolve: Callable[[EventLog, str], str]) -> Callable[[typer.Context, str | None], str | None]:
    """A Typer callback that resolves the parameter's value (not during shell completion)."""

    def callback(ctx: typer.Context, value: str | None) -> str | None:
        if value is None or ctx.resilient_parsing:
            return value
        from p2e.cli._common import open_log

        return resolve(open_log(), value)

    return callback


on_conversation = _resolving(conversation)
on_rollout = _resolving(rollout)
