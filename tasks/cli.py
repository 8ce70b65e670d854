"""The full `sokovan` command: the domain CLI plus the commands that send Celery tasks."""

from __future__ import annotations

from typing import Any, NoReturn

import typer

from sokovan.admission.parse import parse_create, parse_terminate
from sokovan.admission.refusal import INVALID, Refusal
from sokovan.admission.schemas import Limits
from sokovan.cli import app, setup_logging
from sokovan.cli import handlers as handlers_cmd
from sokovan.cli import session as session_cmd
from sokovan.cli.common import settings
from tasks import names
from tasks.api import secret_environ_store
from tasks.app import create_app


@handlers_cmd.app.command("run")
def run_handler(
    name: str = typer.Argument(..., callback=handlers_cmd._known),
    budget: int = typer.Option(None, help="At most this many items this run."),
    wait: float = typer.Option(0.0, help="Seconds to wait for the run's start result."),
) -> None:
    """Sends a manual run of a handler to the workers."""
    result = create_app(settings()).send_task(
        names.HANDLER_RUN, kwargs={"handler": name, "trigger": "manual", "budget": budget}
    )
    typer.echo(f"sent {name} as task {result.id}")
    if wait:
        typer.echo(str(result.get(timeout=wait)))


def _refuse(error: str, code: int = 2) -> NoReturn:
    """One line on stderr and the exit code: 2 for malformed input, 1 for a refusal."""
    typer.echo(f"refused: {error}", err=True)
    raise typer.Exit(code)


def _answer(answer: dict[str, Any]) -> dict[str, Any]:
    if answer.get("error"):
        _refuse(str(answer["error"]), 2 if answer.get("kind") == INVALID else 1)
    return answer


def _pairs(items: list[str] | None, field: str) -> dict[str, str]:
    pairs = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep:
            _refuse(f"{field}: {item[:40]!r} is not NAME=VALUE")
        pairs[name] = value
    return pairs


@session_cmd.app.command("terminate")
def terminate(
    session_id: str,
    reason: str = typer.Option("USER_REQUESTED", help="Recorded and passed to the agents."),
    force: bool = typer.Option(
        False, "--force", help="Give kernels up at once if their agent cannot destroy them."
    ),
    wait: float = typer.Option(30.0, help="Seconds to wait for the answer (0: don't wait)."),
) -> None:
    """Requests termination of a session (a PENDING one is cancelled)."""
    kwargs = {"session_id": session_id, "reason": reason, "force": force}
    parsed = parse_terminate((), kwargs)
    if isinstance(parsed, Refusal):
        _refuse(parsed.error)
    result = create_app(settings()).send_task(names.SESSION_TERMINATE, kwargs=kwargs)
    if not wait:
        typer.echo(f"sent as task {result.id}")
        return
    answer = _answer(result.get(timeout=wait))
    if not answer.get("terminating"):
        typer.echo(f"session {session_id}: {answer.get('note')}")
        return
    typer.echo(f"session {session_id} terminating (run {answer.get('run_id')})")


@session_cmd.app.command("create")
def create(
    image: str = typer.Option(..., help="Image name (see `sokovan image list`)."),
    kernels: int = typer.Option(1, help="Number of kernels."),
    cluster_mode: str = typer.Option("single-node", help="single-node or multi-node."),
    network_type: str = typer.Option("volatile", help="volatile, persistent or host."),
    network_id: str = typer.Option(None, help="Existing network (persistent)."),
    agent: list[str] = typer.Option(None, help="Place on these agents (1, or one per kernel)."),
    slot: list[str] = typer.Option(None, help="Resource slot per kernel, e.g. cpu=2 (repeat)."),
    env: list[str] = typer.Option(None, help="Environment variable NAME=VALUE (repeat)."),
    secret_env: list[str] = typer.Option(
        None,
        help="Secret variable NAME=VALUE whatever its name (repeat); names like "
        "*TOKEN*, *PASSWORD* (SOKOVAN_SECRET_ENV_PATTERNS) given with --env are secret too.",
    ),
    name: str = typer.Option("", help="Session name."),
    queue: bool = typer.Option(True, help="Wait as PENDING when the cluster is full."),
    wait: float = typer.Option(30.0, help="Seconds to wait for the answer."),
) -> None:
    """Submits a session; it is refused with a clear error before anything is created."""
    declared = _pairs(secret_env, "secret_environ")
    request: dict[str, Any] = {
        "image": image,
        "kernels": kernels,
        "cluster_mode": cluster_mode,
        "network_type": network_type,
        "network_id": network_id,
        "agents": agent or [],
        "environ": {**_pairs(env, "environ"), **declared},
        "name": name,
        "queue": queue,
    }
    if slot:
        request["resource_slots"] = _pairs(slot, "resource_slots")
    s = settings()
    parsed = parse_create(request, Limits(max_kernels=s.max_kernels_per_session))
    if isinstance(parsed, Refusal):
        _refuse(parsed.error)
    # Secret values go to the database encrypted first; the message carries references.
    store = secret_environ_store(s)
    environ = store.stash(request["environ"], declared)
    request["environ"] = environ
    result = create_app(s).send_task(names.SESSION_CREATE, kwargs={"request": request})
    try:
        answer = result.get(timeout=wait)
    except Exception:
        store.discard(environ)
        raise
    if answer.get("error"):
        store.discard(environ)
    answer = _answer(answer)
    if answer.get("status") == "PENDING":
        position = answer.get("queue_position")
        typer.echo(f"session {answer['session_id']} PENDING (queue position {position})")
        return
    typer.echo(f"session {answer['session_id']} submitted")


def main() -> None:
    setup_logging()
    app()
