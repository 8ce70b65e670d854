"""Where the sessions a command sent got to: followed with live progress, one line each."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import typer

from sokovan.types import SessionId, SessionStatus
from tasks.cli.common import print_json
from tasks.cli.errors import EXIT_FAILED, CliError
from tasks.cli.progress import ARRIVED, follow_sessions
from tasks.cli.remote import Remote


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
    short = [sid for sid in sids if statuses.get(sid) not in ARRIVED[until]]
    if short:
        sid = short[0]
        others = f" (and {len(short) - 1} more)" if len(short) > 1 else ""
        raise CliError(
            f"failed: session {sid} is {statuses.get(sid)}, not {until}, after waiting up to "
            f"{remote.wait:g}s{others} (see `sokovan session show {sid}`)",
            EXIT_FAILED,
        )


def say(as_json: bool, docs: list[dict[str, Any]], text: str) -> None:
    """Prints the text, or one JSON document (a list of them under "sessions" if several)."""
    if as_json:
        print_json(docs[0] if len(docs) == 1 else {"sessions": docs})
    elif text:
        typer.echo(text)
