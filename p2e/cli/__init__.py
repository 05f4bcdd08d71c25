"""The `p2e` command: thin Typer commands that call the core and render with Rich.

Errors from p2e print as one line on stderr and exit non-zero; no tracebacks for user mistakes.
"""

from __future__ import annotations

import logging
import sys

import typer

from p2e.cli import agent, artifact, chat, conversation, eval, ledger, rollout, store, view
from p2e.cli.terminal import DataConsole, styled
from p2e.errors import one_line, p2e_cause
from p2e.obs.logs import configure_logging

app = typer.Typer(
    name="p2e",
    help="Build, run and evaluate multi-agent systems: conversations on branching event logs, rollouts, "
    "evaluation, wallets, live views. Start with `p2e rollout run experiments/quickstart.yaml`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(conversation.app, name="conversation")
app.add_typer(artifact.app, name="artifact")
app.add_typer(store.app, name="store")
app.add_typer(agent.app, name="agent")
app.add_typer(eval.app, name="eval")
app.add_typer(ledger.app, name="ledger")
app.add_typer(rollout.app, name="rollout")
app.command("chat")(chat.chat)
app.command("view")(view.view)
app.command("observe")(view.observe_cmd)

err = DataConsole(stderr=True)
BUG_EXIT = 70
"""The exit code of an unexpected error (EX_SOFTWARE), so that scripts can tell it from a mistake."""


def main(argv: list[str] | None = None) -> None:
    try:
        configure_logging()  # P2E_LOG_LEVEL, P2E_LOG_FORMAT=json; ids on every record; secrets masked
        code = app(args=argv, standalone_mode=False)
    except typer.Abort:
        err.print("aborted")
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except typer.TyperException as e:  # usage errors: bad option, missing argument
        # usage errors are typer's vendored click exceptions (show() is theirs; not exported)
        e.show()  # type: ignore[attr-defined]
        sys.exit(getattr(e, "exit_code", 2))
    except Exception as e:  # (an error raised in an actor is also an instance of its cause's class)
        if (cause := p2e_cause(e)) is not None:
            err.print(styled(("error:", "bold red"), f" {cause}"), soft_wrap=True)
            sys.exit(cause.exit_code)
        logging.getLogger("p2e.cli").debug("unexpected error", exc_info=e)
        hint = "unexpected: run again with P2E_LOG_LEVEL=DEBUG for the traceback, and report it"
        err.print(styled(("error:", "bold red"), f" {one_line(e)} ({hint})"), soft_wrap=True)
        sys.exit(BUG_EXIT)
    sys.exit(code if isinstance(code, int) else 0)
