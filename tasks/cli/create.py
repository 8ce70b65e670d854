"""`sokovan session create`: one task per session, or the batch task in chunks of its maximum."""

from __future__ import annotations

import uuid
from typing import Any

import typer

from sokovan.admission.parse import parse_create
from sokovan.admission.refusal import Refusal
from sokovan.admission.schemas import Limits
from sokovan.types import ClusterMode, NetworkType, SessionId, SessionStatus
from tasks import names
from tasks.cli.common import JsonOption
from tasks.cli.errors import BadInput, CliError, refusal
from tasks.cli.parsing import parse_pairs, parse_slots
from tasks.cli.remote import Burst, CutShort, Remote, per_task
from tasks.cli.report import follow_and_report, say
from tasks.cli.root import root

# Sessions one command submits at most (README): ten batch messages, refused before any work.
MAX_COUNT = 10_000

WAIT_HELP = (
    "Seconds to wait for the answer and the work it starts, with live progress (0: send only)."
)
CLUSTER_MODES = "|".join(m.value for m in ClusterMode)
NETWORK_TYPES = "|".join(t.value for t in NetworkType)
PENDING = str(SessionStatus.PENDING)


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
    count: int = typer.Option(
        1, min=1, max=MAX_COUNT, help=f"Submit this many such sessions at once (1..{MAX_COUNT})."
    ),
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
    docs = _submit(remote, request, declared, count, as_json)
    if docs is None:
        return
    refused = [d for d in docs if d.get("error")]
    made = [d for d in docs if not d.get("error")]
    _queue_positions(made)
    if not as_json:
        for d in made:
            if d["status"] == PENDING:
                position = d["queue_position"]
                typer.echo(f"session {d['session_id']} PENDING (queue position {position})")
    if refused:
        if made:
            lines = (f"session {d['session_id']} {d['status']}" for d in made if _placed(d))
            say(as_json, made, "\n".join(lines))
        raise _refused(refused, len(docs))
    # Waiting for capacity is not a failure: PENDING ones are printed, not followed.
    follow_and_report(remote, made, SessionStatus.RUNNING, as_json, _placed)


def _placed(doc: dict[str, Any]) -> bool:
    return bool(doc.get("status") != PENDING)


def _queue_positions(docs: list[dict[str, Any]]) -> None:
    """Fills `queue_position` of PENDING sessions whose answer did not carry it."""
    missing = [d for d in docs if d.get("status") == PENDING and "queue_position" not in d]
    positions = root().repository.queue_positions() if missing else {}
    for d in missing:
        d["queue_position"] = positions.get(SessionId(uuid.UUID(d["session_id"])))


def _refused(refused: list[dict[str, Any]], total: int) -> CliError:
    """The first refusal; it says how many of the sessions were refused when not all."""
    error = refusal(refused[0])
    if len(refused) == total:
        return error
    return CliError(f"{error} ({len(refused)} of {total} sessions refused)", error.code)


def _submit(
    remote: Remote, request: dict[str, Any], declared: dict[str, str], count: int, as_json: bool
) -> list[dict[str, Any]] | None:
    """Sends `count` creations; one answer per session, or None with --wait 0.

    Each request carries a session id minted here, so every id is known (and printed) even
    when no answer is awaited. Secret values go to the database encrypted first and each
    message carries references; a refused or unanswered submission's secrets are deleted again.
    """
    store = remote.root.adapters.secret_environ if request["environ"] else None
    environs = [store.stash(request["environ"], declared) if store else {} for _ in range(count)]
    requests = [
        {**request, "environ": environ, "session_id": str(uuid.uuid4())} for environ in environs
    ]
    sent: list[dict[str, Any]] = []
    try:
        burst = remote.send_sessions(
            requests,
            (names.SESSION_CREATE, lambda one: {"request": one}),
            (names.SESSIONS_CREATE, lambda many: {"requests": list(many)}),
        )
        sent = requests
        if not remote.wait:
            _say_sent(as_json, requests, burst)
            return None
        docs = burst.answers(remote, "pull_run_id")
    except Exception as e:
        if store:  # nothing will bind these secrets to a session
            for environ in environs:
                store.discard(environ)
        if isinstance(e, CutShort):
            sent = requests[: e.sent * per_task(count)]
        if sent:  # the ids asked for, before the one-line error
            docs = [{"session_id": r["session_id"]} for r in sent]
            say(as_json, docs, "\n".join(f"session {d['session_id']} sent" for d in docs))
        raise
    for doc, environ in zip(docs, environs, strict=True):
        if store and doc.get("error"):
            store.discard(environ)
    return docs


def _say_sent(as_json: bool, requests: list[dict[str, Any]], burst: Burst) -> None:
    """Each session's id and the task that carries it, when no answer is awaited."""
    docs = [
        {"session_id": r["session_id"], "task_id": burst.task_id(n)} for n, r in enumerate(requests)
    ]
    lines = [f"session {d['session_id']} sent" for d in docs]
    say(as_json, docs, "\n".join([*lines, f"sent as {len(burst.results)} task(s)"]))
