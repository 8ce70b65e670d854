"""`sokovan session`: list, show, create and terminate sessions."""

from __future__ import annotations

import time
import uuid
from typing import Any

import typer

from sokovan.admission.parse import parse_create
from sokovan.admission.refusal import Refusal
from sokovan.admission.schemas import Limits
from sokovan.db.listing import list_sessions
from sokovan.db.repository import SchedulerRepository
from sokovan.types import ClusterMode, NetworkType, SessionId, SessionStatus
from tasks import names
from tasks.cli.common import JsonOption, engine, iso, print_json, print_table, settings
from tasks.cli.errors import EXIT_FAILED, BadInput, CliError, refusal
from tasks.cli.parsing import (
    parse_pairs,
    parse_slots,
    session_id_of,
    terminate_kwargs,
)
from tasks.cli.progress import follow_sessions
from tasks.cli.remote import Remote
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

WAIT_HELP = (
    "Seconds to wait for the answer and the work it starts, with live progress (0: send only)."
)


@app.command("list")
def list_cmd(
    status: list[SessionStatus] = typer.Option(
        None, case_sensitive=False, help="Only these statuses (repeatable), e.g. pending."
    ),
    agent: str = typer.Option(None, help="Only sessions with a kernel on this agent."),
    limit: int = typer.Option(50, help="At most this many, newest first (0: all)."),
    as_json: bool = JsonOption,
    watch: bool = WatchOption,
    interval: float = IntervalOption,
) -> None:
    """Lists sessions, newest first, with their kernel counts and agents."""
    if watch:
        return _watch_list(status, agent, limit, as_json, interval)
    eng = engine()
    page = list_sessions(eng, statuses=[str(s) for s in status or []], agent=agent, limit=limit)
    queue = SchedulerRepository(eng).queue_positions()
    if as_json:
        rows: list[dict[str, Any]] = [
            {
                "id": str(s.id),
                "name": s.name,
                "status": s.status,
                "status_info": s.status_info,
                "scaling_group": s.scaling_group,
                "created_at": iso(s.created_at),
                "status_changed_at": iso(s.status_changed_at),
                "kernels": s.kernels,
                "agents": s.agents,
                "queue_position": queue.get(SessionId(s.id)),
            }
            for s in page.items
        ]
        print_json({"sessions": rows, "total": page.total, "more": page.more})
        return
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


def session_json(repo: SchedulerRepository, sid: SessionId) -> dict[str, Any]:
    """A session's stable JSON fields, its kernels and error info included."""
    s = repo.get_session(sid)
    kernels = [
        {
            "id": str(k.id),
            "hostname": k.cluster_hostname,
            "agent": k.agent_id,
            "status": str(k.status),
            "image": k.image,
            "occupied_slots": k.occupied_slots.to_json(),
        }
        for k in s.kernels
    ]
    return {
        "id": str(s.id),
        "name": s.name,
        "status": str(s.status),
        "status_info": s.status_info,
        "cluster_mode": str(s.cluster_mode),
        "network_type": str(s.network_type),
        "network_id": s.network_id,
        "error": repo.session_status_data(s.id).get("error"),
        "kernels": kernels,
    }


@app.command()
def show(
    session_id: str = typer.Argument(..., help="The session's id (see `sokovan session list`)."),
    as_json: bool = JsonOption,
) -> None:
    """Shows a session, its kernels and any error info."""
    doc = session_json(SchedulerRepository(engine()), session_id_of(session_id))
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


CLUSTER_MODES = "|".join(m.value for m in ClusterMode)
NETWORK_TYPES = "|".join(t.value for t in NetworkType)


@app.command()
def create(
    image: str = typer.Option(..., help="Image name (see `sokovan image list`)."),
    kernels: int = typer.Option(1, help="Number of kernels."),
    cluster_mode: str = typer.Option(
        ClusterMode.SINGLE_NODE.value, metavar=f"[{CLUSTER_MODES}]", help="Cluster mode."
    ),
    network_type: str = typer.Option(
        NetworkType.VOLATILE.value, metavar=f"[{NETWORK_TYPES}]", help="Network type."
    ),
    network_id: str = typer.Option(None, help="Existing network (with --network-type persistent)."),
    agent: list[str] = typer.Option(None, help="Place on these agents (1, or one per kernel)."),
    slot: list[str] = typer.Option(
        None, help="Resource slot per kernel, NAME=VALUE: cpu=2, mem=4g (repeat)."
    ),
    env: list[str] = typer.Option(None, help="Environment variable NAME=VALUE (repeat)."),
    secret_env: list[str] = typer.Option(
        None,
        help="Secret variable NAME=VALUE whatever its name (repeat); names like "
        "*TOKEN*, *PASSWORD* (SOKOVAN_SECRET_ENV_PATTERNS) given with --env are secret too.",
    ),
    name: str = typer.Option("", help="Session name."),
    queue: bool = typer.Option(True, help="Wait as PENDING when the cluster is full."),
    count: int = typer.Option(1, min=1, help="Submit this many such sessions at once."),
    wait: float = typer.Option(30.0, min=0, help=WAIT_HELP),
    as_json: bool = JsonOption,
) -> None:
    """Submits sessions; with --wait follows them to RUNNING (exit 1 if one does not get there)."""
    declared = parse_pairs("secret_environ", secret_env)
    request: dict[str, Any] = {
        "image": image,
        "kernels": kernels,
        "cluster_mode": cluster_mode,
        "network_type": network_type,
        "network_id": network_id,
        "agents": agent or [],
        "environ": {**parse_pairs("environ", env), **declared},
        "name": name,
        "queue": queue,
    }
    slots = parse_slots(slot)
    if slots is not None:
        request["resource_slots"] = slots
    s = settings()
    parsed = parse_create(request, Limits(max_kernels=s.max_kernels_per_session))
    if isinstance(parsed, Refusal):
        raise BadInput(parsed.error)  # the message the task itself would answer
    remote = Remote(s, wait)
    answers = _submit(remote, request, declared, count, as_json)
    if answers is None:
        return
    refused = [a for a in answers if a.get("error")]
    if refused:
        raise refusal(refused[0])
    placed = [a for a in answers if a.get("status") != str(SessionStatus.PENDING)]
    for a in answers:
        if a not in placed and not as_json:
            typer.echo(
                f"session {a['session_id']} PENDING (queue position {a.get('queue_position')})"
            )
    if not placed:  # waiting for capacity is not a failure; `session list` shows the queue
        if as_json:
            _say(as_json, answers, "")
        return
    sids = [SessionId(uuid.UUID(a["session_id"])) for a in placed]
    _follow_and_report(remote, sids, placed, SessionStatus.RUNNING, as_json)


def _submit(
    remote: Remote, request: dict[str, Any], declared: dict[str, str], count: int, as_json: bool
) -> list[dict[str, Any]] | None:
    """Sends `count` creations; their answers, or None with --wait 0.

    Secret values go to the database encrypted first and each message carries references;
    a refused or unanswered submission's secrets are deleted again.
    """
    from tasks.api import secret_environ_store  # builds the Celery app: only when sending

    store = secret_environ_store(remote.settings) if request["environ"] else None
    environs = [store.stash(request["environ"], declared) if store else {} for _ in range(count)]
    try:
        results = [
            remote.send(names.SESSION_CREATE, {"request": {**request, "environ": environ}})
            for environ in environs
        ]
        if not remote.wait:
            _say(as_json, [{"task_id": r.id} for r in results], f"sent as {count} task(s)")
            return None
        answers = [remote.answer(r) for r in results]
    except Exception:
        if store:  # nothing will bind these secrets to a session
            for environ in environs:
                store.discard(environ)
        raise
    for answer, environ in zip(answers, environs, strict=True):
        if store and answer.get("error"):
            store.discard(environ)
    return answers


# Where a session counts as arrived: a PENDING one cancelled by terminate never ran.
_ARRIVED = {
    SessionStatus.RUNNING: {str(SessionStatus.RUNNING)},
    SessionStatus.TERMINATED: {str(SessionStatus.TERMINATED), str(SessionStatus.CANCELLED)},
}


def _follow_and_report(
    remote: Remote,
    sids: list[SessionId],
    answers: list[dict[str, Any]],
    until: SessionStatus,
    as_json: bool,
) -> None:
    """Follows the sessions, prints one line (or document) each, exit 1 if one fell short."""
    statuses = follow_sessions(engine(remote.settings), sids, until, remote.deadline)
    docs = [{**a, "status": statuses.get(sid)} for sid, a in zip(sids, answers, strict=True)]
    _say(as_json, docs, "\n".join(f"session {sid} {statuses.get(sid)}" for sid in sids))
    short = [sid for sid in sids if statuses.get(sid) not in _ARRIVED[until]]
    if short:
        sid = short[0]
        others = f" (and {len(short) - 1} more)" if len(short) > 1 else ""
        raise CliError(
            f"failed: session {sid} is {statuses.get(sid)}, not {until}, after waiting up to "
            f"{remote.wait:g}s{others} (see `sokovan session show {sid}`)",
            EXIT_FAILED,
        )


def _say(as_json: bool, docs: list[dict[str, Any]], text: str) -> None:
    """Prints the text, or one JSON document (a list of them under "sessions" if several)."""
    if as_json:
        print_json(docs[0] if len(docs) == 1 else {"sessions": docs})
    else:
        typer.echo(text)


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
    s = settings()
    repo = SchedulerRepository(engine(s))
    for sid in sids:
        repo.get_session(sid)  # NotFound: `refused: ...`, exit 1, without asking a worker
    remote = Remote(s, wait)
    results = [remote.send(names.SESSION_TERMINATE, kwargs) for kwargs in calls]
    if not wait:
        _say(as_json, [{"task_id": r.id} for r in results], f"sent as {len(sids)} task(s)")
        return
    answers = [remote.answer(r) for r in results]
    refused = [a for a in answers if a.get("error")]
    if refused:
        raise refusal(refused[0])
    if not any(a.get("terminating") for a in answers):
        notes = "\n".join(f"session {a['session_id']}: {a.get('note')}" for a in answers)
        _say(as_json, answers, notes)
        return
    _follow_and_report(remote, sids, answers, SessionStatus.TERMINATED, as_json)


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
    engine()  # a missing or unmigrated database fails here, once, with its one line

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
        engine(), session_ids or [], chosen, dry_run=dry_run, yes=yes, as_json=as_json
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
    s = settings()
    kernel_logs(
        s, SchedulerRepository(engine(s)), session_id_of(session_id), kernel, tail, as_json
    )


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
    eng = engine()
    repo = SchedulerRepository(eng)
    for sid in sids:
        repo.get_session(sid)  # NotFound: `refused: ...`, exit 1
    deadline = time.monotonic() + timeout
    wait_for_sessions(eng, sids, wanted, timeout, deadline, as_json)
