"""`p2e eval run | show | top | diff`: score steps and branches, and compare them."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import typer

from p2e.agents import load_team
from p2e.cli import ids
from p2e.cli._common import AGENTS, console, open_log
from p2e.cli.fit import Col, FitTable
from p2e.cli.render import clip
from p2e.cli.terminal import DataTable, styled
from p2e.errors import InvalidArgument
from p2e.evals.score import Score
from p2e.yamlfile import parse_yaml

app = typer.Typer(
    help="Evaluate conversations: run evaluators, show scores, rank branches.", no_args_is_help=True
)

CONV = typer.Argument(
    ..., metavar="CONV", help=f"conversation name or id ({ids.PREFIX})", callback=ids.on_conversation
)
CONV_CHECKED_LATER = typer.Argument(..., metavar="CONV", help=f"conversation name or id ({ids.PREFIX})")
"""CONV resolved in the command's body, after the options are checked (a bad option is named
first, whatever the store holds)."""
BRANCH = typer.Option(
    None, "--branch", "-b", help=f"branch name ({ids.PREFIX}); default: the checked-out branch"
)


def _params(items: list[str]) -> dict[str, dict[str, Any]]:
    """`--param judge.retries=3` -> {"judge": {"retries": 3}} (values read as YAML scalars)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        ev, dot, name = key.partition(".")
        if not sep or not dot or not ev or not name:
            raise InvalidArgument(f"--param {item!r}: write EVALUATOR.NAME=VALUE, e.g. regex.pattern='^ok'")
        out.setdefault(ev, {})[name] = parse_yaml(value, f"--param {key}")
    return out


@app.command()
def run(
    conv: str = CONV_CHECKED_LATER,
    branch: str | None = BRANCH,
    evaluator: list[str] = typer.Option([], "--evaluator", "-e", help="evaluator id (repeat for several)"),
    param: list[str] = typer.Option([], "--param", "-p", help="EVALUATOR.NAME=VALUE, e.g. max_steps.limit=8"),
    rubric: str | None = typer.Option(None, "--rubric", "-r", help="a rubric YAML file: adds the `judge`"),
    judge_model: str = typer.Option("mock/judge", "--judge-model", help="provider/model of the judge"),
    on: str = typer.Option("step", "--on", help="score each `step`, or the branch as an `episode`"),
    reference: str | None = typer.Option(None, "--reference", help="the expected answer (match evaluators)"),
    module: list[str] = typer.Option([], "--module", "-m", help="a Python module with custom @evaluator"),
    rerun: bool = typer.Option(False, "--rerun", help="score again what is already scored"),
    agents: str = AGENTS,
) -> None:
    """Run evaluators over a branch's steps (or the branch as an episode) and store the scores.

    Examples:
      p2e eval run demo --rubric experiments/rubrics/helpful.yaml
      p2e eval run demo -e max_steps -p max_steps.limit=8 --on episode
      p2e eval run demo -e contains --reference sunny --on episode
    """
    from p2e.evals import default_registry
    from p2e.evals.runner import evaluate_branch
    from p2e.llm import Providers

    if on not in ("step", "episode"):
        raise typer.BadParameter("use step or episode", param_hint="--on")
    scope: Literal["step", "episode"] = "step" if on == "step" else "episode"
    params = _params(param)
    if rubric:
        params.setdefault("judge", {}).update({"rubric": rubric, "model": judge_model})
        evaluator = [*evaluator, "judge"] if "judge" not in evaluator else evaluator
    if not evaluator:
        raise InvalidArgument("name at least one evaluator (--evaluator ID) or a rubric (--rubric FILE)")
    unused = set(params) - set(evaluator)
    if unused:
        raise InvalidArgument(f"--param for evaluators not run: {', '.join(sorted(unused))}")
    registry = default_registry(module)
    bound = [registry.create(e, **params.get(e, {})) for e in evaluator]
    log = open_log()
    conv = ids.conversation(log, conv)
    info = log.branch(conv, ids.branch(log, conv, branch))
    providers = Providers(load_team(agents).providers)
    with console.status(styled(f"evaluating {conv}/{info.name}...")):
        run_all = evaluate_branch(
            log, info, bound, on=scope, reference=reference, providers=providers, skip_done=not rerun
        )
        scores = asyncio.run(run_all)
    _table(scores, f"{len(scores)} new scores for {conv}/{info.name}")
    if not scores and not rerun:
        console.print(
            "every target is scored already by these evaluators (same version and parameters); "
            "--rerun scores again",
            soft_wrap=True,
        )


@app.command()
def show(conv: str = CONV, branch: str | None = BRANCH) -> None:
    """Show the scores that count for a branch (its steps, inherited ones too, and the episode)."""
    from p2e.evals.aggregate import branch_score
    from p2e.evals.store import ScoreStore

    log = open_log()
    info = log.branch(conv, ids.branch(log, conv, branch))
    scores = ScoreStore(log).of_branch(info)
    _table(scores, f"scores of {conv}/{info.name}")
    for ev in sorted({s.evaluator for s in scores}):
        b = branch_score(scores, evaluator=ev)
        value = "-" if b.value is None else f"{b.value:.3f}"
        c = b.counts
        console.print(
            f"{ev}: branch score {value} ({b.source}); done {c.done}, error {c.error}, pending {c.pending}"
        )


@app.command()
def top(
    conv: str = CONV,
    evaluator: str | None = typer.Option(None, "--evaluator", "-e", help="rank by this evaluator only"),
    metric: str | None = typer.Option(None, "--metric", help="rank by this sub-metric instead of the value"),
) -> None:
    """Rank a conversation's branches by their score, best first."""
    from p2e.evals.aggregate import ranked_branches
    from p2e.evals.store import ScoreStore

    log = open_log()
    store = ScoreStore(log)
    scores = store.all(conv)
    evaluators = sorted({s.evaluator for s in scores})
    if evaluator is None and len(evaluators) > 1:
        raise InvalidArgument(
            f"several evaluators scored {conv} ({', '.join(evaluators)}): rank by one with --evaluator ID"
        )
    per_branch = {b.name: store.of_branch(b, scores) for b in log.branches(conv)}
    table = DataTable(title=f"branches of {conv}" + (f" by {metric}" if metric else ""))
    for col in ("rank", "branch", "score", "from", "done", "error", "pending"):
        table.add_column(col)
    ranked = ranked_branches(per_branch, evaluator=evaluator, metric=metric)
    for i, (name, b) in enumerate(ranked, 1):
        value = "-" if b.value is None else f"{b.value:.3f}"
        c = b.counts
        table.add_row(str(i), name, value, b.source, str(c.done), str(c.error), str(c.pending))
    console.print(table)


@app.command()
def diff(
    a: str = typer.Argument(
        ..., metavar="REF_A", help="CONV/BRANCH/SEQ (a step) or CONV/BRANCH (the episode)"
    ),
    b: str = typer.Argument(..., metavar="REF_B", help="the other target"),
) -> None:
    """Compare the scores of two targets, evaluator by evaluator."""
    from p2e.evals.store import ScoreStore

    log = open_log()
    store = ScoreStore(log)
    left, right = _scores_of(log, store, ids.ref(log, a)), _scores_of(log, store, ids.ref(log, b))
    table = DataTable(title=f"{a} vs {b}")
    for col in ("evaluator", a, b, "difference"):
        table.add_column(col)
    for ev in sorted(set(left) | set(right)):
        x, y = left.get(ev), right.get(ev)
        d = f"{y.value - x.value:+.3f}" if x and y and x.value is not None and y.value is not None else ""
        table.add_row(ev, _cell(x), _cell(y), d)
    console.print(table)


def _scores_of(log: Any, store: Any, ref: str) -> dict[str, Score]:
    parts = ref.split("/")
    if len(parts) not in (2, 3) or (len(parts) == 3 and not parts[2].isdecimal()):
        raise InvalidArgument(f"{ref!r}: a target is CONV/BRANCH/SEQ (a step) or CONV/BRANCH (an episode)")
    info = log.branch(parts[0], parts[1])
    seq = int(parts[2]) if len(parts) == 3 else None
    if seq is not None and not 0 <= seq < info.length:
        raise InvalidArgument(f"{ref!r}: the branch holds events 0..{info.length - 1}")
    target = store.target_of(info, seq)
    return {s.evaluator: s for s in store.all(parts[0]) if s.target == target}


def _cell(s: Score | None) -> str:
    if s is None:
        return "-"
    if s.status != "done":
        return f"{s.status}: {clip(s.error or '', 40)}" if s.error else s.status
    return f"{s.value:.3f}"


def _table(scores: list[Score], title: str) -> None:
    cols = (
        Col("target", "id"),
        Col("evaluator"),
        Col("status", drop=2),
        Col("value", "num", justify="right"),
        Col("metrics", "text", drop=1),
        Col("rationale / error", "text"),
    )
    rows = [
        (
            s.target.ref,
            s.evaluator,
            s.status,
            "" if s.value is None else f"{s.value:.3f}",
            clip(", ".join(f"{k} {v:.2f}" for k, v in s.metrics.items()), 50),
            clip(s.error or s.rationale, 80),
        )
        for s in scores
    ]
    console.print(FitTable(cols, rows, title))
