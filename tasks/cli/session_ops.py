"""What `session logs`, `session wait` and terminate by filter do (session.py's new commands)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
import typer

from sokovan import constants as C
from sokovan.config import Settings
from sokovan.db.listing import SessionRow, list_sessions
from sokovan.db.repository import SchedulerRepository
from sokovan.errors import AgentError, AgentRemoteError, ReplyShapeError
from sokovan.types import (
    TERMINAL_SESSION_STATUSES,
    AgentId,
    KernelInfo,
    SessionId,
    SessionStatus,
    utcnow,
)
from tasks.cli.common import print_json, print_table
from tasks.cli.errors import EXIT_FAILED, BadInput, CliError, Unreachable
from tasks.cli.progress import ARRIVED, follow_sessions
from tasks.cli.report import fell_short
from tasks.cli.root import CommandRoot

# ---- session logs -------------------------------------------------------------------------

MAX_TAIL_LINES = 100_000


def pick_kernel(kernels: Sequence[KernelInfo], wanted: str | None) -> KernelInfo:
    """The kernel named by id, id prefix or hostname; the main kernel when none is named."""
    if not kernels:
        raise CliError("failed: the session has no kernels")
    if wanted is None:
        mains = [k for k in kernels if k.cluster_role == "main"]
        return sorted(mains or list(kernels), key=lambda k: k.cluster_idx)[0]
    text = wanted.strip().lower()
    exact = [k for k in kernels if str(k.id) == text or k.cluster_hostname == wanted]
    found = exact or [k for k in kernels if str(k.id).startswith(text)]
    if len(found) == 1:
        return found[0]
    names = ", ".join(f"{k.id} ({k.cluster_hostname})" for k in kernels)
    if not found:
        raise BadInput(f"--kernel: no kernel {wanted!r} in the session; its kernels: {names}")
    raise BadInput(f"--kernel: {wanted!r} names {len(found)} kernels; give more of the id")


def last_lines(text: str, count: int) -> tuple[str, bool]:
    """The last `count` lines of `text`, and whether any were left out."""
    lines = text.splitlines()
    return "\n".join(lines[-count:]), len(lines) > count


async def _fetch_logs(settings: Settings, repo: SchedulerRepository, kernel: KernelInfo) -> str:
    from sokovan.bootstrap import build_agent_pool  # the agent client stack: only when asked
    from sokovan.db.offload import OffloadedStore

    assert kernel.agent_id is not None
    pool = build_agent_pool(settings, OffloadedStore(repo))
    try:
        async with pool.acquire(AgentId(kernel.agent_id)) as client:
            return await client.get_logs(kernel.id)
    finally:
        await pool.close_all()


def kernel_logs(
    settings: Settings,
    repo: SchedulerRepository,
    sid: SessionId,
    kernel_name: str | None,
    tail: int,
    as_json: bool,
) -> None:
    """Prints a kernel's logs as its agent serves them (`get_logs`), the last `tail` lines."""
    if not 1 <= tail <= MAX_TAIL_LINES:
        raise BadInput(f"--tail: 1..{MAX_TAIL_LINES} lines, got {tail}")
    session = repo.get_session(sid)
    kernel = pick_kernel(session.kernels, kernel_name)
    if kernel.agent_id is None:
        raise CliError(
            f"failed: kernel {kernel.id} has no agent yet (session {sid} is {session.status})"
        )
    try:
        text = asyncio.run(_fetch_logs(settings, repo, kernel))
    except (AgentRemoteError, ReplyShapeError) as e:
        raise CliError(f"failed: agent {kernel.agent_id} cannot give the logs: {e}") from e
    except (AgentError, OSError) as e:
        raise Unreachable(f"agent {kernel.agent_id}: {e}") from e
    shown, cut = last_lines(text, tail)
    if as_json:
        print_json(
            {
                "session_id": str(sid),
                "kernel_id": str(kernel.id),
                "agent": kernel.agent_id,
                "logs": shown,
                "truncated": cut or len(text.encode()) >= C.KERNEL_LOGS_MAX_BYTES,
            }
        )
        return
    if shown:
        typer.echo(shown)


# ---- session wait -------------------------------------------------------------------------

WAIT_TARGETS = (SessionStatus.RUNNING, SessionStatus.TERMINATED)


def wait_for_sessions(
    root: CommandRoot,
    sids: Sequence[SessionId],
    until: SessionStatus,
    timeout: float,
    deadline: float,
    as_json: bool,
) -> None:
    """Follows sessions to `until`; exit 0 if all got there, 1 otherwise (one line each)."""
    statuses = follow_sessions(root.engine(), list(sids), until, deadline)
    arrived = {sid: statuses.get(sid) in ARRIVED[until] for sid in sids}
    if as_json:
        print_json(
            {
                "for": str(until),
                "reached": all(arrived.values()),
                "sessions": [
                    {"id": str(sid), "status": statuses.get(sid), "reached": arrived[sid]}
                    for sid in sids
                ],
            }
        )
    else:
        typer.echo("\n".join(f"session {sid} {statuses.get(sid)}" for sid in sids))
    short = fell_short(root, sids, statuses, until, timeout)
    if short:
        raise short


# ---- terminate by filter ------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)?\s*$", re.I)
_UNIT_SEC = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
# Statuses a filter without --status ends: every live one (TERMINATING is on its way already).
LIVE = tuple(
    s
    for s in SessionStatus
    if s not in TERMINAL_SESSION_STATUSES and s != SessionStatus.TERMINATING
)


def parse_age(text: str, option: str = "--older-than") -> timedelta:
    """`90s`, `30m`, `2h`, `1d`, `1w` (a bare number is seconds) as a duration."""
    match = _DURATION.match(text)
    if not match:
        raise BadInput(f"{option}: a duration like 30m, 2h or 1d, got {text!r}")
    amount = float(match.group(1)) * _UNIT_SEC[(match.group(2) or "s").lower()]
    if amount > 100 * 365 * 86400:
        raise BadInput(f"{option}: at most 100 years, got {text!r}")
    return timedelta(seconds=amount)


@dataclass(frozen=True, slots=True)
class Filter:
    statuses: tuple[SessionStatus, ...]
    agent: str | None
    older_than: timedelta | None

    @property
    def given(self) -> bool:
        return bool(self.statuses or self.agent or self.older_than is not None)

    def describe(self) -> str:
        parts = [f"status in {','.join(self.statuses or LIVE)}"]
        if self.agent:
            parts.append(f"a kernel on agent {self.agent}")
        if self.older_than is not None:
            parts.append(f"created more than {_human(self.older_than)} ago")
        return ", ".join(parts)


def _human(age: timedelta) -> str:
    sec = int(age.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if sec >= size and sec % size == 0:
            return f"{sec // size}{unit}"
    return f"{sec}s"


def matching(engine: sa.Engine, f: Filter) -> list[SessionRow]:
    """The sessions the filter names, oldest first."""
    statuses = [str(s) for s in f.statuses or LIVE]
    rows = list_sessions(engine, statuses=statuses, agent=f.agent, limit=0).items
    if f.older_than is not None:
        cutoff = utcnow() - f.older_than
        rows = [r for r in rows if _aware(r.created_at) < cutoff]
    return sorted(rows, key=lambda r: (r.created_at, str(r.id)))


def _aware(value: datetime) -> datetime:
    """SQLite hands datetimes back naive; they are UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _show(rows: Sequence[SessionRow]) -> None:
    now = utcnow()
    table = [
        (
            r.id,
            r.name,
            r.status,
            r.kernels,
            ",".join(r.agents),
            _human(timedelta(seconds=int((now - _aware(r.created_at)).total_seconds()))),
        )
        for r in rows
    ]
    print_table(("ID", "NAME", "STATUS", "KERNELS", "AGENTS", "AGE"), table)


def select_for_termination(
    engine: sa.Engine,
    session_ids: Sequence[str],
    f: Filter,
    *,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> list[str]:
    """The ids `session terminate` goes on to end: those named, or those the filter matches.

    A filter shows what it matched and asks before anything is ended (unless --yes);
    --dry-run only shows. An empty list means there is nothing to send.
    """
    if not f.given:
        if not session_ids:
            raise BadInput("name sessions, or select them with --status, --agent, --older-than")
        if not dry_run:
            return list(session_ids)
        rows = [r for r in list_sessions(engine, limit=0).items if str(r.id) in session_ids]
    else:
        if session_ids:
            raise BadInput(
                "give session ids or a filter (--status, --agent, --older-than), not both"
            )
        rows = matching(engine, f)
    what = f.describe() if f.given else "the named sessions"
    if as_json and dry_run:
        print_json(
            {
                "dry_run": True,
                "filter": what,
                "sessions": [
                    {"id": str(r.id), "name": r.name, "status": r.status, "agents": r.agents}
                    for r in rows
                ],
            }
        )
        return []
    if not rows:
        typer.echo(f"no session matches ({what}); nothing to terminate", err=as_json)
        return []
    if as_json:  # stdout keeps the one JSON document of the termination
        typer.echo(f"{len(rows)} session(s) match ({what})", err=True)
    else:
        _show(rows)
    if dry_run:
        typer.echo(f"{len(rows)} session(s) would be terminated ({what}); dry run, nothing sent")
        return []
    if not yes:
        try:
            ok = typer.confirm(f"Terminate these {len(rows)} session(s)?", err=True)
        except typer.Abort:
            ok = False
        if not ok:
            raise CliError("aborted: nothing terminated", EXIT_FAILED)
    return [str(r.id) for r in rows]
