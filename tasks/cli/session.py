"""`sokovan session`: list, show, create and terminate sessions."""

from __future__ import annotations

import time

import typer

from sokovan.db.listing import list_sessions
from sokovan.db.repository import SchedulerRepository
from sokovan.scheduler.handlers import give_up_in
from sokovan.types import SessionId, SessionStatus
from sokovan.views import failing_kernel, session_document, session_list_document
from tasks import names
from tasks.cli.common import JsonOption, LimitOption, print_json, print_table
from tasks.cli.create import WAIT_HELP, create
from tasks.cli.errors import BadInput, refusal
from tasks.cli.parsing import session_id_of, terminate_kwargs
from tasks.cli.remote import Remote
from tasks.cli.report import follow_and_report, say
from tasks.cli.root import root
from tasks.cli.session_ops import (
    WAIT_TARGETS,
    Filter,
    kernel_logs,
    parse_age,
    select_for_termination,
    wait_for_sessions,
)
from tasks.cli.watch import IntervalOption, WatchOption
from tasks.cli.watch import watch as watch_output

app = typer.Typer(help="Sessions: list, show, create, terminate.", no_args_is_help=True)


@app.command("list")
def list_cmd(
    status: list[SessionStatus] = typer.Option(
        None, case_sensitive=False, help="Only these statuses (repeatable), e.g. pending."
    ),
    agent: str = typer.Option(None, help="Only sessions with a kernel on this agent."),
    limit: int = LimitOption(50),
    as_json: bool = JsonOption,
    watch: bool = WatchOption,
    interval: float = IntervalOption,
) -> None:
    """Lists sessions, newest first, with their kernel counts and agents."""
    if watch:
        return _watch_list(status, agent, limit, as_json, interval)
    r = root()
    statuses = [str(s) for s in status or []]
    if as_json:
        doc = session_list_document(r.repository, statuses=statuses, agent=agent, limit=limit)
        print_json(doc)
        return
    page = list_sessions(r.engine(), statuses=statuses, agent=agent, limit=limit)
    queue = r.repository.queue_positions()
    table_rows = [
        (
            s.id,
            s.name,
            s.status,
            queue.get(SessionId(s.id), ""),
            s.status_info or "",
            s.kernels,
            ",".join(s.agents),
            s.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
        for s in page.items
    ]
    headers = ("ID", "NAME", "STATUS", "QUEUE", "INFO", "KERNELS", "AGENTS", "CREATED (UTC)")
    print_table(headers, table_rows, more=page.more, noun="session(s)")


@app.command()
def show(
    session_id: str = typer.Argument(..., help="The session's id (see `sokovan session list`)."),
    as_json: bool = JsonOption,
) -> None:
    """Shows a session, its kernels and any error info; in a state with a deadline, when it
    gives up, and why its kernels have not moved yet."""
    r = root()
    doc = session_document(r.repository, session_id_of(session_id), r.settings)
    if as_json:
        print_json(doc)
        return
    typer.echo(
        f"session {doc['id']} {doc['name']!r} status={doc['status']} "
        f"info={doc['status_info'] or '-'}"
    )
    typer.echo(
        f"  mode={doc['cluster_mode']} network={doc['network_type']} "
        f"network_id={doc['network_id'] or '-'}"
    )
    if doc["error"]:
        typer.echo(f"  error: {doc['error']}")
    give_up = give_up_in(SessionStatus(doc["status"]))
    if doc["deadline_at"] and give_up is not None:
        typer.echo(f"  {doc['status']} gives up at {doc['deadline_at']}: {give_up.then}")
    rows = [
        (
            k["id"],
            k["hostname"],
            k["agent"] or "-",
            k["status"],
            k["image"],
            ",".join(f"{n}={v}" for n, v in sorted(k["occupied_slots"].items())),
        )
        for k in doc["kernels"]
    ]
    print_table(("KERNEL", "HOST", "AGENT", "STATUS", "IMAGE", "SLOTS"), rows)
    failing = failing_kernel(doc)
    if failing:
        typer.echo(f"{failing} (`session terminate --force` gives it up now)")


app.command()(create)

# Ids looked up per query: well under every database's limit on bound parameters.
_LOOKUP_CHUNK = 500


def _refuse_unknown(repo: SchedulerRepository, sids: list[SessionId]) -> None:
    """NotFound (`refused: ...`, exit 1) for the first unknown id, without asking a worker."""
    for start in range(0, len(sids), _LOOKUP_CHUNK):
        chunk = sids[start : start + _LOOKUP_CHUNK]
        known = {s.id for s in repo.sessions_by_ids(chunk)}
        for sid in chunk:
            if sid not in known:
                repo.get_session(sid)  # raises NotFound with the repository's own message


@app.command()
def terminate(
    session_ids: list[str] = typer.Argument(
        None, help="The sessions' ids (see `sokovan session list`); or select with a filter."
    ),
    reason: str = typer.Option("USER_REQUESTED", help="Recorded and passed to the agents."),
    force: bool = typer.Option(
        False, "--force", help="Give kernels up at once if their agent cannot destroy them."
    ),
    wait: float = typer.Option(30.0, min=0, help=WAIT_HELP),
    as_json: bool = JsonOption,
    status: list[SessionStatus] = typer.Option(
        None, case_sensitive=False, help="Filter: sessions in these statuses (repeatable)."
    ),
    agent: str = typer.Option(None, help="Filter: sessions with a kernel on this agent."),
    older_than: str = typer.Option(
        None, help="Filter: sessions created longer ago than this: 90s, 30m, 2h, 1d."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only show what would be ended."),
    yes: bool = typer.Option(False, "--yes", "-y", help="End what a filter matched unasked."),
) -> None:
    """Terminates sessions (cancels PENDING ones); with --wait follows them to the end.

    Filters (any combination) select the live sessions to end; what they match is shown and
    confirmed first (--yes skips the question, --dry-run only shows)."""
    session_ids = _chosen_for_termination(
        session_ids, status, agent, older_than, dry_run, yes, as_json
    )
    if not session_ids:
        return
    calls = [terminate_kwargs(text, reason, force) for text in session_ids]
    sids = [session_id_of(text) for text in session_ids]
    r = root()
    _refuse_unknown(r.repository, sids)
    remote = Remote(r, wait)
    burst = remote.send_sessions(
        calls,
        (names.SESSION_TERMINATE, lambda one: one),
        (
            names.SESSIONS_TERMINATE,
            lambda many: {
                "session_ids": [c["session_id"] for c in many],
                "reason": reason,
                "force": force,
            },
        ),
    )
    if not wait:
        sent = [{"session_id": str(sid), "task_id": burst.task_id(n)} for n, sid in enumerate(sids)]
        say(as_json, sent, f"sent as {len(burst.results)} task(s)")
        return
    answers = burst.answers(remote)
    refused = [a for a in answers if a.get("error")]
    if refused:
        raise refusal(refused[0])
    if not any(a.get("terminating") for a in answers):
        notes = "\n".join(f"session {a['session_id']}: {a.get('note')}" for a in answers)
        say(as_json, answers, notes)
        return
    follow_and_report(remote, answers, SessionStatus.TERMINATED, as_json)


def _watch_list(
    status: list[SessionStatus],
    agent: str,
    limit: int,
    as_json: bool,
    interval: float,
) -> None:
    """`session list --watch`: the table redrawn as sessions change, until Ctrl-C."""
    if as_json:
        raise BadInput("--watch draws a table; leave out --json")
    root().engine()  # a missing or unmigrated database fails here, once, with its one line

    def draw() -> None:
        list_cmd(
            status=status, agent=agent, limit=limit, as_json=False, watch=False, interval=interval
        )

    watch_output("sokovan session list", draw, interval)


def _chosen_for_termination(
    session_ids: list[str] | None,
    status: list[SessionStatus] | None,
    agent: str | None,
    older_than: str | None,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> list[str]:
    """The ids `terminate` ends: as named, or what a filter matched and the user confirmed."""
    age = None if older_than is None else parse_age(older_than)
    chosen = Filter(tuple(status or ()), agent, age)
    if not chosen.given and session_ids and not dry_run:
        return session_ids
    return select_for_termination(
        root().engine(), session_ids or [], chosen, dry_run=dry_run, yes=yes, as_json=as_json
    )


@app.command()
def logs(
    session_id: str = typer.Argument(..., help="The session's id (see `sokovan session list`)."),
    kernel: str = typer.Option(
        None, help="The kernel: its id, an id prefix or hostname (default: the main kernel)."
    ),
    tail: int = typer.Option(100, help="The last this many lines (1..100000)."),
    as_json: bool = JsonOption,
) -> None:
    """Prints a kernel's logs, fetched from its agent over the agent RPC (get_logs).

    At most the last 1 MiB is fetched; exit 3 when the agent cannot be reached."""
    r = root()
    kernel_logs(r.settings, r.repository, session_id_of(session_id), kernel, tail, as_json)


@app.command()
def wait(
    session_ids: list[str] = typer.Argument(..., help="The sessions' ids; one or more."),
    for_: str = typer.Option(
        "RUNNING", "--for", metavar="[RUNNING|TERMINATED]", help="The status to wait for."
    ),
    timeout: float = typer.Option(60.0, min=0, help="Seconds to wait at most."),
    as_json: bool = JsonOption,
) -> None:
    """Waits until every session reached RUNNING (or TERMINATED); exit 0 if all did, else 1."""
    wanted = {str(t): t for t in WAIT_TARGETS}.get(for_.strip().upper())
    if wanted is None:
        raise BadInput(f"--for: RUNNING or TERMINATED, got {for_!r}")
    sids = [session_id_of(text) for text in session_ids]
    r = root()
    _refuse_unknown(r.repository, sids)
    deadline = time.monotonic() + timeout
    wait_for_sessions(r, sids, wanted, timeout, deadline, as_json)
