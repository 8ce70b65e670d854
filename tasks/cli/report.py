"""Where the sessions a command sent got to: followed with live progress, one line each."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import typer

from sokovan.errors import NotFound
from sokovan.types import SessionId, SessionStatus
from sokovan.views import failing_kernel, session_document
from tasks.cli.common import print_json
from tasks.cli.errors import EXIT_FAILED, CliError
from tasks.cli.progress import ARRIVED, follow_sessions
from tasks.cli.remote import Remote
from tasks.cli.root import CommandRoot


def _everyone(_: dict[str, Any]) -> bool:
    return True


def follow_and_report(
    remote: Remote,
    docs: list[dict[str, Any]],
    until: SessionStatus,
    as_json: bool,
    follow: Callable[[dict[str, Any]], bool] = _everyone,
) -> None:
    """Follows the sessions `follow` picks, prints one line each (or one document of all),
    exit 1 if one fell short; the others are printed as they are."""
    followed = [d for d in docs if follow(d)]
    sids = [SessionId(uuid.UUID(d["session_id"])) for d in followed]
    statuses = follow_sessions(remote.root.engine(), sids, until, remote.deadline) if sids else {}
    for sid, doc in zip(sids, followed, strict=True):
        doc["status"] = statuses.get(sid)
    say(as_json, docs, "\n".join(f"session {sid} {statuses.get(sid)}" for sid in sids))
    short = fell_short(remote.root, sids, statuses, until, remote.wait)
    if short:
        raise short


def fell_short(
    root: CommandRoot,
    sids: Sequence[SessionId],
    statuses: Mapping[SessionId, str | None],
    until: SessionStatus,
    waited: float,
) -> CliError | None:
    """Exit 1 naming the first session that did not reach `until` and what holds it up (a
    kernel's failed destroys, when its state gives up); None when every one got there."""
    short = [sid for sid in sids if statuses.get(sid) not in ARRIVED[until]]
    if not short:
        return None
    sid = short[0]
    others = f" (and {len(short) - 1} more)" if len(short) > 1 else ""
    held = "".join(f"; {w}" for w in _held_up_by(root, sid))
    return CliError(
        f"failed: session {sid} is {statuses.get(sid)}, not {until}, after waiting up to "
        f"{waited:g}s{others}{held} (see `sokovan session show {sid}`)",
        EXIT_FAILED,
    )


def _held_up_by(root: CommandRoot, sid: SessionId) -> list[str]:
    """A kernel's failed destroys and when the session's state gives up, if they are known."""
    try:
        doc = session_document(root.repository, sid, root.settings)
    except NotFound:  # removed meanwhile: the status line says enough
        return []
    why = [failing_kernel(doc)]
    if doc["deadline_at"]:
        why.append(f"{doc['status']} gives up at {doc['deadline_at']}")
    return [w for w in why if w]


def say(as_json: bool, docs: list[dict[str, Any]], text: str) -> None:
    """Prints the text, or one JSON document (a list of them under "sessions" if several)."""
    if as_json:
        print_json(docs[0] if len(docs) == 1 else {"sessions": docs})
    elif text:
        typer.echo(text)
