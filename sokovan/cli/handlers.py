"""`sokovan handlers`: list, pause, resume and trigger handlers."""

from __future__ import annotations

import typer

from sokovan.cli.common import engine, table
from sokovan.db.ledger import RunLedger

app = typer.Typer(help="The periodic handlers: list, pause, resume, run now.", no_args_is_help=True)

HANDLERS = ("pull_images", "start_sessions", "terminate_sessions", "sweep_stale_kernels")


def _known(name: str) -> str:
    if name not in HANDLERS:
        raise typer.BadParameter(f"unknown handler {name!r}; known: {', '.join(HANDLERS)}")
    return name


@app.command("list")
def list_handlers() -> None:
    """Lists handlers with their paused state and last run."""
    ledger = RunLedger(engine())
    states = ledger.handler_states()
    rows = []
    for name in HANDLERS:
        paused, reason = states.get(name, (False, None))
        last = ledger.list_runs(handler=name, limit=1)
        rows.append(
            (
                name,
                "paused" if paused else "active",
                reason or "",
                f"#{last[0].id} {last[0].status}" if last else "-",
            )
        )
    typer.echo(table(("HANDLER", "STATE", "REASON", "LAST RUN"), rows))


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
