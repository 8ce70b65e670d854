"""Session status changes, collected inside the transaction that makes them and published
after it commits (the StatusFeed port; README, "A manager's view").

Every writer of a session's status notes its change on its connection (`note`); the
transaction's owner collects them (`collecting`) and hands them to the feed once committed,
so a rolled-back move is never published. The SQL row stays the truth: the feed is a
notification a manager may miss (a crash between commit and publish), and re-reads with
`sokovan.session.get`.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import sqlalchemy as sa

from sokovan.types import SessionId

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One session reached `status` at `at`."""

    session_id: SessionId
    status: str
    status_info: str | None
    at: datetime


class StatusFeed(Protocol):
    """Where committed session status changes go; publishing never raises."""

    def publish(self, changes: Sequence[StatusChange]) -> None: ...


class NullFeed:
    """Publishes nothing (a repository built outside a worker, tests)."""

    def publish(self, changes: Sequence[StatusChange]) -> None:
        return None


NULL_FEED = NullFeed()
_collectors: weakref.WeakKeyDictionary[sa.Connection, list[StatusChange]] = (
    weakref.WeakKeyDictionary()
)


@contextmanager
def collecting(conn: sa.Connection, into: list[StatusChange]) -> Iterator[None]:
    """Changes noted on `conn` inside this block go to `into`."""
    _collectors[conn] = into
    try:
        yield
    finally:
        _collectors.pop(conn, None)


def note(
    conn: sa.Connection,
    session_ids: Iterable[SessionId],
    status: str,
    at: datetime,
    status_info: str | None = None,
) -> None:
    """Notes that these sessions moved to `status` in `conn`'s transaction."""
    into = _collectors.get(conn)
    if into is None:
        log.debug("session moves to %s on a connection nobody collects", status)
        return
    into.extend(StatusChange(SessionId(s), str(status), status_info, at) for s in session_ids)
