"""`sokovan session`: list, show, create and terminate sessions."""

from __future__ import annotations

import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

import typer

from sokovan.agentd.specs import parse_size
from sokovan.db.listing import kernel_statuses, list_sessions
from sokovan.db.repository import SchedulerRepository
from sokovan.errors import ConfigError, NotFound
from sokovan.types import (
    TERMINAL_KERNEL_STATUSES,
    TERMINAL_SESSION_STATUSES,
    ClusterMode,
    KernelStatus,
    NetworkType,
    SessionId,
    SessionStatus,
)
from tasks.cli.common import JsonOption, engine, iso, print_json, print_table, settings
from tasks.cli.errors import EXIT_FAILED, BadInput, CliError
from tasks.cli.progress import Snapshot, follow
from tasks.cli.remote import Remote

app = typer.Typer(help="Sessions: list, show, create, terminate.", no_args_is_help=True)

WAIT_HELP = (
    "Seconds to wait for the answer and the work it starts, with live progress (0: send only)."
)


def parse_session_id(text: str) -> SessionId:
    """A session id argument, or exit 2 naming it."""
    try:
        return SessionId(uuid.UUID(text))
    except ValueError:
        raise BadInput(f"SESSION_ID {text!r} is not a session id (a UUID)") from None


def parse_pairs(option: str, values: list[str] | None) -> dict[str, str]:
    """`NAME=VALUE` words of a repeatable option; anything else is bad input naming it."""
    out: dict[str, str] = {}
    for word in values or []:
        name, sep, value = word.partition("=")
        if not sep or not name.strip():
            raise BadInput(f"{option} {word!r}: expected NAME=VALUE")
        out[name.strip()] = value
    return out


def parse_slots(values: list[str] | None) -> dict[str, str] | None:
    """`--slot cpu=2 --slot mem=4g` -> resource slots with mem in bytes."""
    slots = parse_pairs("--slot", values)
    for name, value in slots.items():
        try:
            slots[name] = parse_size(value) if name == "mem" else str(Decimal(value))
        except (ConfigError, InvalidOperation):
            raise BadInput(f"--slot {name}={value!r}: expected a number (mem: 4g, 512m)") from None
    return slots or None


@app.command("list")
def list_cmd(
    status: list[SessionStatus] = typer.Option(None, help="Only these statuses (repeatable)."),
    agent: str = typer.Option(None, help="Only sessions with a kernel on this agent."),
    limit: int = typer.Option(50, help="At most this many, newest first (0: all)."),
    as_json: bool = JsonOption,
) -> None:
    """Lists sessions, newest first, with their kernel counts and agents."""
    page = list_sessions(
        engine(), statuses=[str(s) for s in status or []], agent=agent, limit=limit
    )
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
            s.status_info or "",
            s.kernels,
            ",".join(s.agents),
            s.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
        for s in page.items
    ]
    headers = ("ID", "NAME", "STATUS", "INFO", "KERNELS", "AGENTS", "CREATED (UTC)")
    print_table(headers, table_rows, more=page.more, noun="session(s)")


@app.command()
def show(
    session_id: str = typer.Argument(..., help="The session's id (see `sokovan session list`)."),
    as_json: bool = JsonOption,
) -> None:
    """Shows a session, its kernels and any error info."""
    repo = SchedulerRepository(engine())
    s = repo.get_session(parse_session_id(session_id))
    error = repo.session_status_data(s.id).get("error")
    kernels: list[dict[str, Any]] = [
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
    if as_json:
        print_json(
            {
                "id": str(s.id),
                "name": s.name,
                "status": str(s.status),
                "status_info": s.status_info,
                "cluster_mode": str(s.cluster_mode),
                "network_type": str(s.network_type),
                "network_id": s.network_id,
                "error": error,
                "kernels": kernels,
            }
        )
        return
    typer.echo(f"session {s.id} {s.name!r} status={s.status} info={s.status_info or '-'}")
    typer.echo(f"  mode={s.cluster_mode} network={s.network_type} network_id={s.network_id or '-'}")
    if error:
        typer.echo(f"  error: {error}")
    rows = [
        (
            k["id"],
            k["hostname"],
            k["agent"] or "-",
            k["status"],
            k["image"],
            ",".join(f"{n}={v}" for n, v in sorted(k["occupied_slots"].items())),
        )
        for k in kernels
    ]
    print_table(("KERNEL", "HOST", "AGENT", "STATUS", "IMAGE", "SLOTS"), rows)


def _session_snapshot(sid: SessionId, *, until: SessionStatus) -> Snapshot:
    """A session's kernels as progress: RUNNING (or TERMINATED when terminating) is done."""
    found = kernel_statuses(engine(), sid)
    if found is None:
        raise NotFound(f"no session {sid}")
    status, statuses = found
    target = KernelStatus(str(until))
    done = sum(1 for k in statuses if k == target)
    failed = sum(1 for k in statuses if k in TERMINAL_KERNEL_STATUSES and k != target)
    over = status == str(until) or SessionStatus(status) in TERMINAL_SESSION_STATUSES
    if until == SessionStatus.RUNNING and status == str(SessionStatus.TERMINATING):
        over = True  # a start that failed: the launcher hands the session to termination
    return Snapshot(status, len(statuses), done, failed, 0, over)


def wait_session(remote: Remote, sid: SessionId, until: SessionStatus, label: str) -> str:
    """Follows a session until `until` (or an end) or the deadline; returns its status."""
    snap = follow(label, lambda: _session_snapshot(sid, until=until), remote.deadline)
    return snap.status


@app.command()
def create(
    image: str = typer.Option(..., help="Image name (see `sokovan image list`)."),
    kernels: int = typer.Option(1, min=1, help="Number of kernels."),
    cluster_mode: ClusterMode = typer.Option(ClusterMode.SINGLE_NODE, help="Cluster mode."),
    network_type: NetworkType = typer.Option(NetworkType.VOLATILE, help="Network type."),
    network_id: str = typer.Option(None, help="Existing network (with --network-type persistent)."),
    agent: list[str] = typer.Option(None, help="Place on these agents (1, or one per kernel)."),
    slot: list[str] = typer.Option(
        None, help="Resource slot per kernel, NAME=VALUE: cpu=2, mem=4g (repeat)."
    ),
    env: list[str] = typer.Option(None, help="Environment variable NAME=VALUE (repeat)."),
    name: str = typer.Option("", help="Session name."),
    wait: float = typer.Option(30.0, min=0, help=WAIT_HELP),
    as_json: bool = JsonOption,
) -> None:
    """Submits a session; with --wait follows it to RUNNING (exit 1 if it does not get there)."""
    request = {
        "image": image,
        "kernels": kernels,
        "cluster_mode": str(cluster_mode),
        "network_type": str(network_type),
        "network_id": network_id,
        "agents": agent or [],
        "resource_slots": parse_slots(slot),
        "environ": parse_pairs("--env", env),
        "name": name,
    }
    remote = Remote(settings(), wait)
    result = remote.send("sokovan.session.create", {"request": request})
    if not wait:
        _say(as_json, {"task_id": result.id}, f"sent as task {result.id}")
        return
    answer = remote.answer(result)
    if answer.get("error"):
        field = f" ({answer['field']})" if answer.get("field") else ""
        raise CliError(f"refused: {answer['error']}{field}")
    sid = SessionId(uuid.UUID(answer["session_id"]))
    status = wait_session(remote, sid, SessionStatus.RUNNING, f"session {sid}")
    _say(as_json, {**answer, "status": status}, f"session {sid} {status}")
    _reached(sid, status, SessionStatus.RUNNING, wait)


def _reached(sid: SessionId, status: str, target: SessionStatus, wait: float) -> None:
    """Exit 1, saying why, when the session did not get to `target` within the wait."""
    if status != str(target):
        raise CliError(
            f"session {sid} is {status}, not {target}, after waiting up to {wait:g}s "
            f"(see `sokovan session show {sid}`)",
            EXIT_FAILED,
        )


def _say(as_json: bool, document: dict[str, Any], line: str) -> None:
    if as_json:
        print_json(document)
    else:
        typer.echo(line)


@app.command()
def terminate(
    session_id: str = typer.Argument(..., help="The session's id (see `sokovan session list`)."),
    reason: str = typer.Option("USER_REQUESTED", help="Recorded and passed to the agents."),
    wait: float = typer.Option(30.0, min=0, help=WAIT_HELP),
    as_json: bool = JsonOption,
) -> None:
    """Requests termination of a session and, with --wait, follows it to TERMINATED."""
    sid = parse_session_id(session_id)
    s = settings()
    SchedulerRepository(engine(s)).get_session(sid)  # NotFound: one line, exit 1
    remote = Remote(s, wait)
    result = remote.send("sokovan.session.terminate", {"session_id": str(sid), "reason": reason})
    if not wait:
        _say(as_json, {"task_id": result.id}, f"sent as task {result.id}")
        return
    answer = remote.answer(result)
    if answer.get("error"):
        raise CliError(f"refused: {answer['error']}")
    if not answer.get("terminating"):
        _say(as_json, answer, f"session {sid}: {answer.get('note')}")
        return
    status = wait_session(remote, sid, SessionStatus.TERMINATED, f"session {sid}")
    _say(as_json, {**answer, "status": status}, f"session {sid} {status}")
    _reached(sid, status, SessionStatus.TERMINATED, wait)
