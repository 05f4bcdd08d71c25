"""Agent tools for money: check_balance, transfer, reward, transaction_history.

The payer is always the calling agent, `ctx.agent`, set by the runtime: no tool takes a payer
or a wallet to spend from, so no model output, and no message in the conversation asking the
agent to "pay from bob's wallet", can move another agent's money (an extra argument such as
`payer` is refused by the schema). Payments go through the agent's Wallet actor under Ray, else
through an in-process `Wallet`: the same spending-policy code either way.

Each payment's command id says what the payment is (`command_id`): in a rollout, the episode
(not the attempt), the call's place and the terms, so an attempt retried after a crash pays once;
elsewhere the conversation, branch and tool call, so a retried call pays once. The per-episode
budget counts every attempt at an episode together.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Annotated

from pydantic import BaseModel, Field

from p2e.ledger.amount import ToolAmount, format_amount
from p2e.ledger.base import COMMAND_ID_RE, Entry
from p2e.ledger.wallet import LEDGER_TOOLS as LEDGER_TOOLS  # the names registered below
from p2e.ledger.wallet import PayRequest, WalletAccess, wallet_for
from p2e.tools.registry import REGISTRY, ToolContext, tool


def _wallet(ctx: ToolContext) -> WalletAccess:
    if ctx.store is None:
        raise RuntimeError(
            "the ledger tools need the store, and this run has none; run the agent with a store"
        )
    return wallet_for(ctx.store, ctx.agent, ctx.wallets)


def command_id(ctx: ToolContext, tool_name: str, payee: str, amount: int, reason: str) -> str:
    """Stable for one payment (so a retry pays once), distinct across payments and branches.

    In a rollout episode it is what the payment is, not which attempt made it: the episode, the
    branch, the call's place in it (the reply's seq and the call's index) and the payment's
    terms. An attempt that repeats an abandoned attempt's payment finds it already made; one
    that pays something else at that place makes a new payment. Outside a rollout it is the
    conversation, branch and call id."""
    call = ctx.call_id or uuid.uuid4().hex
    if ctx.episode:
        terms = hashlib.sha256(f"{tool_name}\0{payee}\0{amount}\0{reason}".encode()).hexdigest()[:12]
        where = ctx.positions.get(call, call)
        cid = f"tool:{ctx.episode}:{ctx.branch}:{where}:{terms}"
    else:
        cid = f"tool:{ctx.conversation}:{ctx.branch}:{call}"
        if tool_name != "transfer":
            cid = f"{cid}:{tool_name}"
    if not COMMAND_ID_RE.fullmatch(cid):
        cid = f"tool:{hashlib.sha256(cid.encode()).hexdigest()[:40]}"
    return cid


class Balance(BaseModel):
    wallet: str
    balance: str


class Payment(BaseModel):
    paid: str
    to: str
    balance: str
    """The payer's balance after the payment."""
    entry: int
    already_done: bool = False
    """True when this call had been applied before (a retry): nothing moved this time."""


AMOUNT = Field(description="how much, as a decimal string such as '12.5' (at most 10 decimals) or an integer")


def _pay(ctx: ToolContext, to: str, minor: int, reason: str, tool_name: str) -> Payment:
    wallet = _wallet(ctx)
    receipt = wallet.pay(
        PayRequest(
            payee=to,
            amount=minor,
            reason=reason,
            command_id=command_id(ctx, tool_name, to, minor, reason),
            episode=ctx.episode or ctx.conversation,
        )
    )
    after = receipt.entry.after(ctx.agent)
    return Payment(
        paid=format_amount(minor),
        to=to,
        balance=format_amount(after if after is not None else wallet.balance()),
        entry=receipt.entry.seq,
        already_done=receipt.replayed,
    )


@REGISTRY.register
@tool(side_effect_free=True, cacheable=False)  # a read, but payments change it
def check_balance(ctx: ToolContext) -> Balance:
    """The balance of your own wallet."""
    return Balance(wallet=ctx.agent, balance=format_amount(_wallet(ctx).balance()))


@REGISTRY.register
@tool(side_effect_free=False)  # moves money: a strict duplicate-call policy never repeats it
def transfer(
    to: Annotated[str, Field(description="the agent to pay (its id)", min_length=1, max_length=64)],
    amount: Annotated[ToolAmount, AMOUNT],
    reason: Annotated[str, Field(description="what the payment is for", max_length=200)],
    ctx: ToolContext,
) -> Payment:
    """Pay another agent from your own wallet. You can only ever spend your own money."""
    return _pay(ctx, to, amount, reason, "transfer")


@REGISTRY.register
@tool(side_effect_free=False)  # moves money: a strict duplicate-call policy never repeats it
def reward(
    agent: Annotated[
        str, Field(description="the agent whose work you reward (its id)", min_length=1, max_length=64)
    ],
    amount: Annotated[ToolAmount, AMOUNT],
    ctx: ToolContext,
    work: Annotated[str, Field(description="the work you are paying for", max_length=200)] = "",
) -> Payment:
    """Pay another agent for its work, from your own wallet."""
    return _pay(ctx, agent, amount, f"reward: {work}" if work else "reward", "reward")


@REGISTRY.register
@tool(side_effect_free=True, cacheable=False)  # a read, but payments change it
def transaction_history(
    ctx: ToolContext,
    limit: Annotated[int, Field(description="how many of the latest transactions", ge=1, le=50)] = 10,
) -> str:
    """The latest transactions of your own wallet, oldest first, with your balance after each."""
    entries = _wallet(ctx).history(limit)
    if not entries:
        return "no transactions yet"
    return "\n".join(_line(e, ctx.agent) for e in entries)


def _line(e: Entry, wallet: str) -> str:
    after = e.after(wallet)
    balance = f"; balance {format_amount(after)}" if after is not None else ""
    delta = e.delta(wallet)
    change = f" ({format_amount(delta, signed=True)})" if delta else ""
    return f"#{e.seq} {e.describe()}{change}{balance}"
