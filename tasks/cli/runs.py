"""`sokovan runs`: the run ledger."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime, timedelta

import typer

from sokovan.db.listing import list_runs
from sokovan.db.stats import HandlerStats, SessionStats, slot_text
from sokovan.scheduler.handlers import handler_names
from sokovan.types import RunId, RunRecord, RunStatus, utcnow
from sokovan.views import item_json, run_json
from tasks.cli.common import MAX_ID, JsonOption, LimitOption, print_json, table
from tasks.cli.errors import BadInput
from tasks.cli.root import root

app = typer.Typer(
    help="What the scheduler did: runs and their per-item outcomes.", no_args_is_help=True
)


def known_handler(name: str | None) -> str | None:
    """A declared handler's name, or a refusal (exit 2) listing them."""
    if name is not None and name not in handler_names():
        raise typer.BadParameter(f"unknown handler {name!r}; known: {', '.join(handler_names())}")
    return name


@app.command("list")
def list_cmd(
    handler: str = typer.Option(None, help="Only this handler.", callback=known_handler),
    status: list[RunStatus] = typer.Option(None, help="Only runs with this status (repeatable)."),
    agent: str = typer.Option(None, help="Only runs with an item on this agent."),
    limit: int = LimitOption(20),
    as_json: bool = JsonOption,
) -> None:
    """Lists runs, newest first."""
    page = list_runs(
        root().engine(),
        handler=handler,
        statuses=[str(s) for s in status or []],
        agent=agent,
        limit=limit,
    )
    if as_json:
        print_json(
            {"runs": [run_json(r) for r in page.items], "total": page.total, "more": page.more}
        )
        return
    typer.echo(runs_table(page.items))
    if page.more:
        typer.echo(f"... {page.more} more run(s) (raise --limit, or filter)")


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
def show(
    run_id: int = typer.Argument(
        ..., min=1, max=MAX_ID, help="The run's id (see `sokovan runs list`)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Shows one run with its per-item outcomes and evidence."""
    ledger = root().ledger
    r = ledger.get_run(RunId(run_id))
    items = ledger.items(RunId(run_id))
    if as_json:
        print_json({**run_json(r), "items": [item_json(i) for i in items]})
        return
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
    if items:
        rows = [
            (
                i.item_id,
                i.agent_id or "-",
                ("skip" if i.skipped else ("ok" if i.ok else "FAIL"))
                + ("" if i.counted else " (late)"),
                f"{i.duration * 1000:.0f}ms",
                i.error or "",
                json.dumps(i.evidence, sort_keys=True) if i.evidence else "",
            )
            for i in items
        ]
        typer.echo("")
        headers = ("ITEM", "AGENT", "RESULT", "TOOK", "ERROR", "EVIDENCE")
        # Errors and evidence wrap in their columns; ids and results are never cut.
        typer.echo(table(headers, rows, wrap=SHOW_WRAP))


# Widths the free-text columns of `runs show` wrap at (`--json` has them whole, unwrapped).
SHOW_WRAP = {"ERROR": 60, "EVIDENCE": 50}

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str | None) -> datetime | None:
    """`90m`, `24h`, `7d` (or empty / `all`) -> the start of the window, UTC."""
    if not text or text == "all":
        return None
    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if match is None:
        raise BadInput(f"--since {text!r}: expected a number and one of s, m, h, d (e.g. 24h)")
    return utcnow() - timedelta(seconds=int(match[1]) * _UNITS[match[2]])


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


@app.command()
def stats(
    since: str = typer.Option("all", help="Only runs started within this window: 90m, 24h, 7d."),
    handler: str = typer.Option(None, help="Only this handler.", callback=known_handler),
    sessions: bool = typer.Option(False, "--sessions", help="Per session instead of per handler."),
    session: list[str] = typer.Option(None, help="Only this session (repeatable; --sessions)."),
    as_json: bool = JsonOption,
) -> None:
    """Aggregates: per handler (runs, items, failure rate, p50/p95) or per session (kernels)."""
    window = parse_since(since)
    reader = root().stats
    if sessions or session:
        _session_stats(reader.sessions(session or None, since=window), as_json)
    else:
        _handler_stats(reader.handlers(since=window, handler=handler), as_json)


def _session_stats(per_session: Sequence[SessionStats], as_json: bool) -> None:
    if as_json:
        docs = [
            {
                "session_id": s.session_id,
                "created": s.created,
                "destroyed": s.destroyed,
                "failed": s.failed,
                "skipped": s.skipped,
                "freed_slots": s.freed_slots.to_json(),
            }
            for s in per_session
        ]
        print_json({"sessions": docs})
        return
    rows = [
        (s.session_id, s.created, s.destroyed, s.failed, s.skipped, slot_text(s.freed_slots))
        for s in per_session
    ]
    headers = ("SESSION", "CREATED", "DESTROYED", "FAILED", "SKIPPED", "FREED SLOTS")
    typer.echo(table(headers, rows))


def _handler_stats(per_handler: Sequence[HandlerStats], as_json: bool) -> None:
    if as_json:
        fields = ("handler", "runs", "by_status", "items", "succeeded", "failed", "skipped")
        docs = [
            {
                **{f: getattr(h, f) for f in fields},
                "failure_rate": h.failure_rate,
                "p50": h.p50,
                "p95": h.p95,
            }
            for h in per_handler
        ]
        print_json({"handlers": docs})
        return
    rows = [
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
        for h in per_handler
    ]
    headers = ("HANDLER", "RUNS", "BY STATUS", "ITEMS", "OK", "FAIL", "SKIP", "FAIL%")
    typer.echo(table((*headers, "P50", "P95"), rows))
