"""`sokovan runs`: the run ledger."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta

import typer

from sokovan.cli.common import engine, settings, table
from sokovan.db.ledger import RunLedger, RunRecord, utcnow
from sokovan.db.stats import RunStats, slot_text
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
    runs = ledger.list_runs(handler=handler, limit=limit, status=status)
    typer.echo(runs_table(runs))


def runs_table(runs: Sequence[RunRecord]) -> str:
    """The `runs list` table of these runs."""
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
        for r in runs
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
    return table(headers, rows)


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


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str | None) -> datetime | None:
    """`90m`, `24h`, `7d` (or empty / `all`) -> the start of the window, UTC."""
    if not text or text == "all":
        return None
    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if match is None:
        raise typer.BadParameter(f"{text!r}: expected a number and one of s, m, h, d (e.g. 24h)")
    return utcnow() - timedelta(seconds=int(match[1]) * _UNITS[match[2]])


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


@app.command()
def stats(
    since: str = typer.Option("all", help="Only runs started within this window: 90m, 24h, 7d."),
    handler: str = typer.Option(None, help="Only this handler."),
    sessions: bool = typer.Option(False, "--sessions", help="Per session instead of per handler."),
    session: list[str] = typer.Option(None, help="Only this session (repeatable; --sessions)."),
) -> None:
    """Aggregates: per handler (runs, items, failure rate, p50/p95) or per session (kernels)."""
    window = parse_since(since)
    reader = RunStats(engine())
    if sessions or session:
        rows = [
            (s.session_id, s.created, s.destroyed, s.failed, s.skipped, slot_text(s.freed_slots))
            for s in reader.sessions(session or None, since=window)
        ]
        headers = ("SESSION", "CREATED", "DESTROYED", "FAILED", "SKIPPED", "FREED SLOTS")
        typer.echo(table(headers, rows))
        return
    rows2 = [
        (
            h.handler,
            h.runs,
            " ".join(f"{k}={v}" for k, v in sorted(h.by_status.items())),
            h.items,
            h.succeeded,
            h.failed,
            h.skipped,
            f"{h.failure_rate:.1%}",
            _seconds(h.p50),
            _seconds(h.p95),
        )
        for h in reader.handlers(since=window, handler=handler)
    ]
    headers2 = ("HANDLER", "RUNS", "BY STATUS", "ITEMS", "OK", "FAIL", "SKIP", "FAIL%")
    typer.echo(table((*headers2, "P50", "P95"), rows2))


def metrics(
    port: int = typer.Option(None, help="HTTP port (default: SOKOVAN_METRICS_PORT)."),
    addr: str = typer.Option("127.0.0.1", help="Address to listen on."),
) -> None:
    """Serves the ledger's Prometheus metrics on /metrics until Ctrl-C."""
    from sokovan.cli.handlers import HANDLERS
    from sokovan.metrics import serve

    s = settings()
    server, _ = serve(engine(s), port or s.metrics_port, addr, HANDLERS)
    typer.echo(f"ledger metrics on http://{addr}:{port or s.metrics_port}/metrics")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
