"""`sokovan runs`: the run ledger."""

from __future__ import annotations

import json

import typer

from sokovan.cli.common import engine, table
from sokovan.db.ledger import RunLedger
from sokovan.errors import NotFound
from sokovan.types import RunId

app = typer.Typer(
    help="What the scheduler did: runs and their per-item outcomes.", no_args_is_help=True
)


@app.command("list")
def list_runs(
    handler: str = typer.Option(None, help="Only this handler."),
    status: str = typer.Option(None, help="Only runs with this status."),
    limit: int = typer.Option(20, help="How many, newest first."),
) -> None:
    """Lists runs, newest first."""
    ledger = RunLedger(engine())
    rows = [
        (
            r.id,
            r.handler,
            r.trigger,
            r.status,
            r.requested,
            r.succeeded,
            r.failed,
            r.skipped,
            r.started_at.strftime("%Y-%m-%d %H:%M:%S"),
            "" if r.duration is None else f"{r.duration:.2f}s",
            r.note or r.error or "",
        )
        for r in ledger.list_runs(handler=handler, limit=limit, status=status)
    ]
    headers = (
        "ID",
        "HANDLER",
        "TRIGGER",
        "STATUS",
        "REQ",
        "OK",
        "FAIL",
        "SKIP",
        "STARTED (UTC)",
        "TOOK",
        "NOTE",
    )
    typer.echo(table(headers, rows))


@app.command()
def show(run_id: int = typer.Argument(..., help="The run's id.")) -> None:
    """Shows one run with its per-item outcomes and evidence."""
    ledger = RunLedger(engine())
    try:
        r = ledger.get_run(RunId(run_id))
    except NotFound as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from e
    typer.echo(f"run {r.id}  {r.handler}  trigger={r.trigger}  status={r.status}")
    typer.echo(
        f"  requested={r.requested} succeeded={r.succeeded} failed={r.failed} skipped={r.skipped}"
    )
    finished = r.finished_at.isoformat() if r.finished_at else "-"
    typer.echo(f"  started={r.started_at.isoformat()}  finished={finished}")
    if r.scope:
        typer.echo(f"  scope={', '.join(map(str, r.scope))}")
    for label, value in (("fan-out", r.fanout_id), ("error", r.error), ("note", r.note)):
        if value:
            typer.echo(f"  {label}: {value}")
    items = ledger.items(RunId(run_id))
    if items:
        rows = [
            (
                i.item_id,
                i.agent_id or "-",
                "skip" if i.skipped else ("ok" if i.ok else "FAIL"),
                f"{i.duration * 1000:.0f}ms",
                i.error or "",
                json.dumps(i.evidence, sort_keys=True) if i.evidence else "",
            )
            for i in items
        ]
        typer.echo("")
        typer.echo(table(("ITEM", "AGENT", "RESULT", "TOOK", "ERROR", "EVIDENCE"), rows))
