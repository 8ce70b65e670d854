"""`sokovan session`: list, show, create and terminate sessions."""

from __future__ import annotations

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
from tasks.cli.common import JsonOption, iso, print_json, print_table
from tasks.cli.errors import EXIT_FAILED, BadInput, CliError, refusal
from tasks.cli.parsing import (
    parse_pairs,
    parse_slots,
    session_id_of,
    terminate_kwargs,
)
from tasks.cli.progress import follow_sessions
from tasks.cli.remote import Remote
from tasks.cli.root import root

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
) -> None:
    """Lists sessions, newest first, with their kernel counts and agents."""
    r = root()
    page = list_sessions(
        r.engine(), statuses=[str(s) for s in status or []], agent=agent, limit=limit
    )
    queue = r.repository.queue_positions()
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
    doc = session_json(root().repository, session_id_of(session_id))
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
    r = root()
    parsed = parse_create(request, Limits(max_kernels=r.settings.max_kernels_per_session))
    if isinstance(parsed, Refusal):
        raise BadInput(parsed.error)  # the message the task itself would answer
    remote = Remote(r, wait)
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
    store = remote.root.adapters.secret_environ if request["environ"] else None
    environs = [store.stash(request["environ"], declared) if store else {} for _ in range(count)]
    try:
        results = remote.send_all(
            names.SESSION_CREATE,
            [{"request": {**request, "environ": environ}} for environ in environs],
        )
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
    statuses = follow_sessions(remote.root.engine(), sids, until, remote.deadline)
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
        ..., help="The sessions' ids (see `sokovan session list`); one or more."
    ),
    reason: str = typer.Option("USER_REQUESTED", help="Recorded and passed to the agents."),
    force: bool = typer.Option(
        False, "--force", help="Give kernels up at once if their agent cannot destroy them."
    ),
    wait: float = typer.Option(30.0, min=0, help=WAIT_HELP),
    as_json: bool = JsonOption,
) -> None:
    """Terminates sessions (cancels PENDING ones); with --wait follows them to the end."""
    calls = [terminate_kwargs(text, reason, force) for text in session_ids]
    sids = [session_id_of(text) for text in session_ids]
    r = root()
    _refuse_unknown(r.repository, sids)
    remote = Remote(r, wait)
    results = remote.send_all(names.SESSION_TERMINATE, calls)
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
