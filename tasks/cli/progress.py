"""Live progress of a `--wait` command: done, failed and skipped of requested."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from sokovan.db.listing import kernel_statuses
from sokovan.errors import NotFound
from sokovan.types import (
    TERMINAL_KERNEL_STATUSES,
    TERMINAL_SESSION_STATUSES,
    SessionId,
    SessionStatus,
)
from tasks.cli.common import console

# How often the ledger is read while waiting: quick enough to feel live, light on the database.
POLL_SEC = 0.25


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Where a run (or a session's kernels) stands."""

    status: str
    requested: int
    done: int
    failed: int
    skipped: int
    finished: bool

    @property
    def counts(self) -> str:
        return (
            f"{self.done} done, {self.failed} failed, {self.skipped} skipped "
            f"of {self.requested}  [{self.status}]"
        )


def follow(label: str, poll: Callable[[], Snapshot], deadline: float) -> Snapshot:
    """Polls until finished or `deadline` (monotonic), drawing a bar on stderr."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console(err=True), transient=False) as bar:
        task = bar.add_task(label, total=None, counts="")
        while True:
            snap = poll()
            bar.update(
                task,
                total=max(snap.requested, 1),
                completed=snap.done + snap.failed + snap.skipped,
                counts=snap.counts,
            )
            if snap.finished or time.monotonic() >= deadline:
                return snap
            time.sleep(POLL_SEC)


# Where a session counts as arrived: a PENDING one cancelled by terminate never ran, and
# ended as asked (its kernels too).
ARRIVED = {
    SessionStatus.RUNNING: {str(SessionStatus.RUNNING)},
    SessionStatus.TERMINATED: {str(SessionStatus.TERMINATED), str(SessionStatus.CANCELLED)},
}


def sessions_snapshot(
    engine: sa.Engine, sids: Sequence[SessionId], until: SessionStatus
) -> tuple[Snapshot, dict[SessionId, str]]:
    """Kernels of these sessions as progress (at `until` is done) and each session's status."""
    arrived = ARRIVED[until]
    statuses: dict[SessionId, str] = {}
    requested = done = failed = 0
    over = True
    found = kernel_statuses(engine, sids)
    for sid in sids:
        if sid not in found:
            raise NotFound(f"no session {sid}")
        status, kernels = found[sid]
        statuses[sid] = status
        requested += len(kernels)
        done += sum(1 for k in kernels if k in arrived)
        failed += sum(1 for k in kernels if k in TERMINAL_KERNEL_STATUSES and k not in arrived)
        ended = status == str(until) or SessionStatus(status) in TERMINAL_SESSION_STATUSES
        # A start that failed: the launcher hands the session to termination.
        ended = ended or (until == SessionStatus.RUNNING and status == "TERMINATING")
        over = over and ended
    reached = sum(1 for s in statuses.values() if s in arrived)
    label = f"{reached}/{len(sids)} {until}"
    return Snapshot(label, requested, done, failed, 0, over), statuses


def follow_sessions(
    engine: sa.Engine, sids: Sequence[SessionId], until: SessionStatus, deadline: float
) -> dict[SessionId, str]:
    """Follows sessions until each reached `until` (or an end) or the deadline."""
    latest: dict[SessionId, str] = {}

    def poll() -> Snapshot:
        snap, statuses = sessions_snapshot(engine, sids, until)
        latest.update(statuses)
        return snap

    what = f"session {sids[0]}" if len(sids) == 1 else f"{len(sids)} sessions"
    follow(what, poll, deadline)
    return latest
