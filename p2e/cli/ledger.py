"""`p2e ledger init | balance | transfer | mint | history | overview | audit | verify | metrics`.

Amounts on the command line are in units ("12.5"); the ledger keeps them as integers of minor
units. This is the operator's tool: `transfer` moves money between any two wallets (agents pay
only from their own, through their tools).
"""

from __future__ import annotations

import uuid

import typer
from pydantic import ValidationError

from p2e.cli._common import AGENTS, console, open_log
from p2e.cli.terminal import DataTable, styled
from p2e.errors import InvalidArgument
from p2e.ledger import Entry, Ledger, format_amount, open_ledger_on, parse_amount
from p2e.ledger.settings import LedgerSettings, load_settings, save_settings
from p2e.yamlfile import field_problems

app = typer.Typer(
    help="Agents' wallets on the ledger: fund, pay, inspect, audit and verify.", no_args_is_help=True
)

AGENT = typer.Argument(..., metavar="AGENT", help="the wallet's name (an agent id)")
MAX_LIMIT = 1_000_000
MAX_SEQ = 2**62
"""Bounds of --limit and --since: the store takes 64-bit list indexes, and `since + limit` must fit."""


def _ledger() -> Ledger:
    return open_ledger_on(open_log())


def _cid(given: str | None, what: str) -> str:
    return given or f"cli-{what}-{uuid.uuid4().hex[:16]}"


@app.command()
def init(
    balance: str = typer.Option("0", "--balance", "-b", help="mint this much into every wallet (units)"),
    agents: str = AGENTS,
    wallet: list[str] = typer.Option([], "--wallet", "-w", help="also open this wallet (repeat for several)"),
    cap: str | None = typer.Option(None, "--cap", help="the faucet's cap: the most that may ever be minted"),
    backend: str | None = typer.Option(None, "--backend", help="embedded (default) or canton; recorded"),
    url: str | None = typer.Option(None, "--url", help="Canton Ledger API URL, e.g. http://localhost:6865"),
) -> None:
    """Open a wallet for every agent of the agents file (and each --wallet), and fund them.

    Running it again opens what is missing and mints nothing twice for the same --balance.

    Examples:
      p2e ledger init --balance 100
      p2e ledger init --balance 50 --wallet sponsor --cap 1000000
      p2e ledger init --backend canton --url http://localhost:6865 --balance 100
    """
    from p2e.agents import load_team

    amount = parse_amount(balance, what="--balance", allow_zero=True)
    cap_minor = parse_amount(cap, what="--cap") if cap is not None else None
    names = sorted({*load_team(agents).agents, *wallet})
    log = open_log()
    old = load_settings(log) or LedgerSettings()
    chosen = backend or old.backend
    if chosen not in ("embedded", "canton"):
        raise InvalidArgument(f"--backend {chosen!r}: use embedded or canton")
    settings = old.model_copy(update={"backend": chosen, "url": url or old.url})
    ledger = open_ledger_on(log, settings.backend, settings.url)  # fails here, before recording
    save_settings(log, settings)
    ledger.initialize(cap_minor)
    table = DataTable(title=f"wallets ({ledger.backend} ledger)")
    for col in ("wallet", "party", "funded", "balance"):
        table.add_column(col)
    for name in names:
        info = ledger.open_wallet(name)
        funded = ""
        if amount:
            r = ledger.mint(
                name, amount, reason="p2e ledger init", command_id=f"init:{name}:{format_amount(amount)}"
            )
            funded = "already" if r.replayed else format_amount(amount)
        table.add_row(name, info.party, funded, format_amount(ledger.balance(name)))
    console.print(table)


@app.command()
def balance(agent: str = AGENT) -> None:
    """Print one wallet's balance.

    Example: p2e ledger balance writer
    """
    console.print(styled(f"{agent}: ", (format_amount(_ledger().balance(agent)), "bold")))


@app.command()
def transfer(
    payer: str = typer.Argument(..., metavar="FROM", help="the wallet to pay from"),
    payee: str = typer.Argument(..., metavar="TO", help="the wallet to pay to"),
    amount: str = typer.Argument(..., metavar="AMOUNT", help="in units, e.g. 12.5"),
    reason: str = typer.Option(..., "--reason", "-r", help="what the payment is for"),
    command_id: str | None = typer.Option(
        None, "--command-id", help="an id to make a retry safe (printed when not given)"
    ),
) -> None:
    """Move money between two wallets (an operator's action).

    Repeating the command with the same --command-id applies it once.

    Examples:
      p2e ledger transfer planner writer 12.5 --reason "draft"
      p2e ledger transfer planner writer 12.5 --reason "draft" --command-id pay-draft-1
    """
    minor = parse_amount(amount)
    r = _ledger().transfer(payer, payee, minor, reason=reason, command_id=_cid(command_id, "transfer"))
    _receipt(r.entry, r.replayed)


@app.command()
def mint(
    to: str = typer.Argument(..., metavar="TO", help="the wallet to fund"),
    amount: str = typer.Argument(..., metavar="AMOUNT", help="in units, e.g. 100"),
    reason: str = typer.Option("p2e ledger mint", "--reason", "-r", help="why"),
    command_id: str | None = typer.Option(None, "--command-id", help="an id to make a retry safe"),
) -> None:
    """Create money in a wallet, through the faucet (within its cap).

    Example: p2e ledger mint sponsor 500 --reason "bounty funds"
    """
    r = _ledger().mint(to, parse_amount(amount), reason=reason, command_id=_cid(command_id, "mint"))
    _receipt(r.entry, r.replayed)


def _receipt(e: Entry, replayed: bool) -> None:
    done = (
        styled(("already applied", "yellow"), " (nothing moved again)")
        if replayed
        else styled(("done", "green"))
    )
    balances = ", ".join(f"{w} {format_amount(a)}" for w, _, a in e.moves)
    console.print(styled(done, f": #{e.seq} {e.describe()}; balances now: {balances}; command id {e.cid}"))


def entries_table(entries: list[Entry], title: str, wallet: str | None = None) -> DataTable:
    """Journal entries; with `wallet`, its change and balance after each."""
    table = DataTable(title=title)
    for col in (
        "#",
        "kind",
        "amount",
        "from -> to",
        "reason",
        "command id",
        *(["balance"] if wallet else []),
    ):
        table.add_column(col, overflow="fold")
    for e in entries:
        moves = e.describe().split(" ", 2)[2] if e.kind != "open" else e.by
        moves = moves.split(" (", 1)[0]
        amount = format_amount(e.delta(wallet), signed=True) if wallet else format_amount(e.amount)
        extra = [format_amount(e.after(wallet) or 0)] if wallet else []
        table.add_row(str(e.seq), e.kind, amount, moves, e.reason, e.cid, *extra)
    return table


@app.command()
def history(
    agent: str = AGENT,
    limit: int = typer.Option(
        20, "--limit", "-n", min=1, max=MAX_LIMIT, help="how many of the latest entries"
    ),
) -> None:
    """The latest entries that touched a wallet, with its balance after each.

    Example: p2e ledger history writer -n 50
    """
    ledger = _ledger()
    console.print(entries_table(ledger.history(agent, limit), f"history of {agent}", wallet=agent))
    console.print(styled("balance: ", (format_amount(ledger.balance(agent)), "bold")))


@app.command()
def overview() -> None:
    """Every wallet and escrow, and the totals.

    Example: p2e ledger overview
    """
    ledger = _ledger()
    table = DataTable(title=f"wallets ({ledger.backend} ledger)")
    for col in ("wallet", "party", "balance"):
        table.add_column(col)
    for w in ledger.wallets():
        table.add_row(w.name, w.party, format_amount(w.balance))
    console.print(table)
    escrows = ledger.escrows()
    if escrows:
        et = DataTable(title="escrows")
        for col in ("escrow", "sponsor", "arbiter", "amount", "state", "memo"):
            et.add_column(col)
        for e in escrows:
            et.add_row(e.id, e.sponsor, e.arbiter, format_amount(e.amount), e.state, e.memo)
        console.print(et)
    m = ledger.metrics()
    console.print(
        f"supply {format_amount(m.supply)} (minted {format_amount(m.minted)}, in escrow "
        f"{format_amount(m.escrowed)}); {m.transfers} transfer{'' if m.transfers == 1 else 's'}, "
        f"volume {format_amount(m.volume)}"
    )


@app.command()
def audit(
    since: int = typer.Option(
        0, "--since", min=0, max=MAX_SEQ, help="the first entry to show (entries are numbered from 0)"
    ),
    limit: int = typer.Option(100, "--limit", "-n", min=1, max=MAX_LIMIT, help="how many entries at most"),
) -> None:
    """The journal: every command applied, in order.

    Examples:
      p2e ledger audit
      p2e ledger audit --since 120 -n 20
    """
    entries = _ledger().audit(since, limit)
    console.print(entries_table(entries, f"journal from #{since}"))


@app.command()
def verify() -> None:
    """Check the ledger: hash chain, replayed balances, supply == minted, no negative balance.

    Exits 1 and names the first bad entry when something is wrong.

    Example: p2e ledger verify
    """
    with console.status("verifying the ledger..."):
        rep = _ledger().verify()
    if rep.ok:
        console.print(
            styled(
                ("ok", "bold green"),
                f": {rep.entries} entries, {rep.wallets} wallets, supply "
                f"{format_amount(rep.supply)} == minted {format_amount(rep.minted)}"
                + (f", head {rep.head[:12]}" if rep.head else "")
                + f" ({rep.seconds:.2f} s)",
            )
        )
        return
    bad = f"; first bad entry: #{rep.first_bad}" if rep.first_bad is not None else ""
    console.print(
        styled(("the ledger does not verify", "bold red"), f" ({len(rep.problems)} problems{bad}):")
    )
    for p in rep.problems:
        console.print(f"  - {p}")
    raise typer.Exit(1)


@app.command()
def policy(
    agent: str = AGENT,
    max_per_transfer: str | None = typer.Option(None, "--max-per-transfer", help="largest single payment"),
    budget_per_episode: str | None = typer.Option(None, "--budget-per-episode", help="most paid per episode"),
    payee: list[str] = typer.Option([], "--payee", "-p", help="a wallet it may pay (repeat; default: any)"),
    clear: bool = typer.Option(False, "--clear", help="remove every limit"),
) -> None:
    """Show an agent's spending policy, or set it (any option given replaces the whole policy).

    Examples:
      p2e ledger policy planner
      p2e ledger policy planner --max-per-transfer 10 --budget-per-episode 25 --payee writer
      p2e ledger policy planner --clear
    """
    from p2e.ledger import PolicyStore, SpendingPolicy

    log = open_log()
    store = PolicyStore(log)
    if clear or max_per_transfer or budget_per_episode or payee:
        fields = (
            {}
            if clear
            else {
                "max_per_transfer": max_per_transfer,
                "budget_per_episode": budget_per_episode,
                "allowed_payees": payee or None,
            }
        )
        try:  # amounts as text: a policy's amounts are units
            new = SpendingPolicy.model_validate(fields)
        except ValidationError as e:
            raise InvalidArgument(f"policy of {agent!r}: {field_problems(e)}") from None
        store.set(agent, new)
    p = store.get(agent)
    cap = f"at most {format_amount(p.max_per_transfer)}" if p.max_per_transfer is not None else "no limit"
    budget = (
        f"at most {format_amount(p.budget_per_episode)}" if p.budget_per_episode is not None else "no limit"
    )
    payees = ", ".join(p.allowed_payees) if p.allowed_payees is not None else "anyone"
    console.print(f"{agent}: {cap} per transfer; {budget} per episode; may pay {payees}")


@app.command()
def metrics() -> None:
    """Wallets, supply, volume and counts.

    Example: p2e ledger metrics
    """
    m = _ledger().metrics()
    table = DataTable(title=f"ledger metrics ({m.backend})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in (
        ("wallets", str(m.wallets)),
        ("supply", format_amount(m.supply)),
        ("minted", format_amount(m.minted)),
        ("cap", format_amount(m.cap)),
        ("in escrow", format_amount(m.escrowed)),
        ("open escrows", str(m.open_escrows)),
        ("transfers", str(m.transfers)),
        ("volume", format_amount(m.volume)),
        ("journal entries", str(m.entries)),
    ):
        table.add_row(name, value)
    console.print(table)
