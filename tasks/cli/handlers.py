"""`sokovan handlers`: list, pause, resume and run handlers."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import typer

from sokovan.db.listing import run_progress
from sokovan.scheduler.handlers import HANDLERS as DECLARATIONS
from sokovan.scheduler.handlers import handler_names
from sokovan.types import RunStatus
from tasks import names
from tasks.cli.common import JsonOption, print_json, print_table
from tasks.cli.errors import CliError, refusal
from tasks.cli.progress import Snapshot, follow
from tasks.cli.remote import Remote
from tasks.cli.root import root

app = typer.Typer(help="The periodic handlers: list, pause, resume, run now.", no_args_is_help=True)

HANDLERS = handler_names()

Handler = StrEnum("Handler", {name: name for name in HANDLERS})  # type: ignore[misc]
NAME_HELP = "The handler (see `sokovan handlers list`)."


@app.command("list")
def list_cmd(as_json: bool = JsonOption) -> None:
    """Lists handlers: paused or active, budget, the run in flight and the last finished run."""
    r = root()
    s, ledger = r.settings, r.ledger
    states = ledger.handler_states()
    docs: list[dict[str, Any]] = []
    for d in DECLARATIONS:
        paused, reason = states.get(d.name, (False, None))
        last = ledger.list_runs(handler=d.name, limit=1, finished=True)
        docs.append(
            {
                "handler": d.name,
                "state": "paused" if paused else "active",
                "budget": s.budget(d.name) or None,
                "running": [int(r.id) for r in ledger.running(d.name)],
                "last_run_id": int(last[0].id) if last else None,
                "last_status": str(last[0].status) if last else None,
                "reason": reason,
                "description": d.description,
                "targets": d.targets.describe(),
                "budget_unit": d.targets.unit,
                "give_up": None if d.give_up is None else d.give_up.then,
            }
        )
    if as_json:
        print_json({"handlers": docs})
        return
    rows = [
        (
            d["handler"],
            d["state"],
            d["budget"] or "-",
            ",".join(f"#{r}" for r in d["running"]) or "-",
            f"#{d['last_run_id']} {d['last_status']}" if d["last_run_id"] else "-",
            d["reason"] or "",
        )
        for d in docs
    ]
    print_table(("HANDLER", "STATE", "BUDGET", "RUNNING", "LAST FINISHED", "REASON"), rows)


@app.command()
def pause(
    name: Handler = typer.Argument(..., help=NAME_HELP),
    reason: str = typer.Option(None, help="Why, for the next operator."),
) -> None:
    """Pauses a handler: beat ticks, manual starts and recovery leave it alone."""
    root().ledger.set_paused(str(name), True, reason)
    typer.echo(f"{name} paused")


@app.command()
def resume(name: Handler = typer.Argument(..., help=NAME_HELP)) -> None:
    """Resumes a paused handler; its next tick runs."""
    root().ledger.set_paused(str(name), False, None)
    typer.echo(f"{name} resumed")


# Run statuses `handlers run` exits 0 with; any other (skipped, held, partial, ...) exits 1.
OK_STATUSES = frozenset({str(RunStatus.SUCCEEDED)})


@app.command("run")
def run_cmd(
    name: Handler = typer.Argument(..., help=NAME_HELP),
    budget: int = typer.Option(None, min=0, help="At most this many items this run."),
    wait: float = typer.Option(
        30.0,
        min=0,
        help="Seconds to wait for the run to finish, with live progress (0: send only).",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Starts a manual run; exits 1 unless it succeeded (skipped, held, partial, failed)."""
    remote = Remote(root(), wait)
    result = remote.send(
        names.HANDLER_RUN, {"handler": str(name), "trigger": "manual", "budget": budget}
    )
    if not wait:
        _say(as_json, {"task_id": result.id}, f"sent {name} as task {result.id}")
        return
    answer = remote.answer(result)
    if answer.get("error"):
        raise refusal(answer)
    run_id, status = answer.get("run_id"), str(answer.get("status"))
    if run_id is not None:
        status = _follow_run(remote, int(run_id), str(name))
    doc = {**answer, "status": status}
    note = f" ({answer['note']})" if answer.get("note") else ""
    _say(as_json, doc, f"{name}: run {run_id if run_id is not None else '-'} {status}{note}")
    if status not in OK_STATUSES:
        raise CliError(f"failed: {name}: the run ended {status}{note}")


def _follow_run(remote: Remote, run_id: int, name: str) -> str:
    eng = remote.root.engine()

    def poll() -> Snapshot:
        p = run_progress(eng, run_id)
        if p is None:
            return Snapshot("unknown", 0, 0, 0, 0, True)
        return Snapshot(
            p.status, p.requested, p.succeeded, p.failed, p.skipped, p.status != "running"
        )

    snap = follow(f"run {run_id} {name}", poll, remote.deadline)
    if not snap.finished:
        raise CliError(
            f"failed: run {run_id} still running after {remote.wait:g}s "
            f"(`sokovan runs show {run_id}`)"
        )
    return snap.status


def _say(as_json: bool, document: dict[str, Any], line: str) -> None:
    if as_json:
        print_json(document)
    else:
        typer.echo(line)
