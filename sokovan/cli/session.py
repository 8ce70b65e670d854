"""`sokovan session`: sessions and their kernels as stored."""

from __future__ import annotations

import uuid

import typer

from sokovan.cli.common import engine, table
from sokovan.db.repository import SchedulerRepository
from sokovan.errors import NotFound
from sokovan.types import SessionId, SessionStatus

app = typer.Typer(help="Sessions: list, show, create, terminate.", no_args_is_help=True)


@app.command("list")
def list_sessions(
    status: list[SessionStatus] = typer.Option(
        None, case_sensitive=False, help="Only these statuses (repeatable), e.g. pending."
    ),
    limit: int = typer.Option(50),
) -> None:
    """Lists sessions with their kernel counts; PENDING ones with their place in the queue."""
    repo = SchedulerRepository(engine())
    queue = repo.queue_positions()
    rows = [
        (
            s.id,
            s.name,
            s.status,
            queue.get(s.id, ""),
            s.status_info or "",
            len(s.kernels),
            ",".join(sorted({k.agent_id or "-" for k in s.kernels})),
        )
        for s in repo.sessions_in(status or list(SessionStatus), limit=limit)
    ]
    typer.echo(table(("ID", "NAME", "STATUS", "QUEUE", "INFO", "KERNELS", "AGENTS"), rows))


@app.command()
def show(session_id: str) -> None:
    """Shows a session, its kernels and any error info."""
    repo = SchedulerRepository(engine())
    try:
        s = repo.get_session(SessionId(uuid.UUID(session_id)))
    except (ValueError, NotFound) as e:
        typer.echo(f"no session {session_id!r}: {e}", err=True)
        raise typer.Exit(1) from e
    typer.echo(f"session {s.id} {s.name!r} status={s.status} info={s.status_info or '-'}")
    typer.echo(f"  mode={s.cluster_mode} network={s.network_type} network_id={s.network_id or '-'}")
    error = repo.session_status_data(s.id).get("error")
    if error:
        typer.echo(f"  error: {error}")
    rows = [
        (
            k.id,
            k.cluster_hostname,
            k.agent_id or "-",
            k.status,
            k.image,
            ",".join(f"{n}={v}" for n, v in sorted(k.occupied_slots.to_json().items())),
        )
        for k in s.kernels
    ]
    typer.echo(table(("KERNEL", "HOST", "AGENT", "STATUS", "IMAGE", "SLOTS"), rows))
