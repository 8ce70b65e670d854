"""Live progress of a `--wait` command: done, failed and skipped of requested."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

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
