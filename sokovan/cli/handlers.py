"""`sokovan handlers`: list, pause, resume and trigger handlers."""

from __future__ import annotations

import typer

from sokovan.cli.common import engine, settings, table
from sokovan.db.ledger import RunLedger
from sokovan.scheduler.handlers import handler_names

app = typer.Typer(help="The periodic handlers: list, pause, resume, run now.", no_args_is_help=True)

HANDLERS = handler_names()


def _known(name: str) -> str:
    if name not in HANDLERS:
        raise typer.BadParameter(f"unknown handler {name!r}; known: {', '.join(HANDLERS)}")
    return name


@app.command("list")
def list_handlers() -> None:
    """Lists handlers: paused or active, budget, the run in flight and the last finished run."""
    s = settings()
    ledger = RunLedger(engine(s))
    states = ledger.handler_states()
    rows = []
    for name in HANDLERS:
        paused, reason = states.get(name, (False, None))
        running = ledger.running(name)
        last = ledger.list_runs(handler=name, limit=1, finished=True)
        rows.append(
            (
                name,
                "paused" if paused else "active",
                s.budget(name) or "-",
                ",".join(f"#{r.id}" for r in running) or "-",
                f"#{last[0].id} {last[0].status}" if last else "-",
                reason or "",
            )
        )
    typer.echo(table(("HANDLER", "STATE", "BUDGET", "RUNNING", "LAST FINISHED", "REASON"), rows))


@app.command()
def pause(
    name: str = typer.Argument(..., callback=_known),
    reason: str = typer.Option(None, help="Why, for the next operator."),
) -> None:
    """Pauses a handler: beat ticks, manual starts and recovery leave it alone."""
    RunLedger(engine()).set_paused(name, True, reason)
    typer.echo(f"{name} paused")


@app.command()
def resume(name: str = typer.Argument(..., callback=_known)) -> None:
    """Resumes a paused handler; its next tick runs."""
    RunLedger(engine()).set_paused(name, False, None)
    typer.echo(f"{name} resumed")
