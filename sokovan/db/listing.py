"""Read-only views for operators: newest-first pages with totals, and counts by status."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import sqlalchemy as sa

from sokovan.db.ledger import run_from_row
from sokovan.db.schema import agents, kernels, run_items, runs, sessions
from sokovan.types import RunRecord, utcnow

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """At most `limit` items, newest first, and how many matched in all."""

    items: list[T]
    total: int

    @property
    def more(self) -> int:
        """How many matching items the page left out."""
        return self.total - len(self.items)


@dataclass(frozen=True, slots=True)
class SessionRow:
    """A session as `session list` shows it."""

    id: uuid.UUID
    name: str
    status: str
    status_info: str | None
    scaling_group: str
    created_at: datetime
    status_changed_at: datetime
    kernels: int
    agents: list[str]


def _count(conn: sa.Connection, query: sa.Select[Any]) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one())


def list_sessions(
    engine: sa.Engine,
    *,
    statuses: Collection[str] = (),
    agent: str | None = None,
    limit: int = 50,
) -> Page[SessionRow]:
    """Sessions newest first, optionally of some statuses or with a kernel on `agent`."""
    query = sa.select(sessions)
    if statuses:
        query = query.where(sessions.c.status.in_(list(statuses)))
    if agent:
        on_agent = sa.select(kernels.c.session_id).where(kernels.c.agent_id == agent)
        query = query.where(sessions.c.id.in_(on_agent))
    with engine.connect() as conn:
        total = _count(conn, query)
        page = query.order_by(sessions.c.created_at.desc(), sessions.c.id.desc())
        rows = list(conn.execute(page.limit(limit) if limit > 0 else page).mappings())
        ids = [r["id"] for r in rows]
        per: dict[uuid.UUID, list[str | None]] = {i: [] for i in ids}
        if ids:
            krows = conn.execute(
                sa.select(kernels.c.session_id, kernels.c.agent_id).where(
                    kernels.c.session_id.in_(ids)
                )
            )
            for sid, aid in krows:
                per[sid].append(aid)
    items = [
        SessionRow(
            id=r["id"],
            name=r["name"],
            status=r["status"],
            status_info=r["status_info"],
            scaling_group=r["scaling_group"],
            created_at=r["created_at"],
            status_changed_at=r["status_changed_at"],
            kernels=len(per[r["id"]]),
            agents=sorted({a or "-" for a in per[r["id"]]}),
        )
        for r in rows
    ]
    return Page(items, total)


def list_runs(
    engine: sa.Engine,
    *,
    handler: str | None = None,
    statuses: Collection[str] = (),
    agent: str | None = None,
    limit: int = 20,
) -> Page[RunRecord]:
    """Runs newest first, optionally of one handler, some statuses, or touching `agent`."""
    query = sa.select(runs)
    if handler:
        query = query.where(runs.c.handler == handler)
    if statuses:
        query = query.where(runs.c.status.in_(list(statuses)))
    if agent:
        touched = sa.select(run_items.c.run_id).where(run_items.c.agent_id == agent)
        query = query.where(runs.c.id.in_(touched))
    with engine.connect() as conn:
        total = _count(conn, query)
        page = query.order_by(runs.c.id.desc())
        rows = conn.execute(page.limit(limit) if limit > 0 else page).mappings()
        return Page([run_from_row(r) for r in rows], total)


def _by(conn: sa.Connection, column: sa.Column[Any]) -> dict[str, int]:
    rows = conn.execute(sa.select(column, sa.func.count()).group_by(column))
    return {str(value): int(n) for value, n in rows}


@dataclass(frozen=True, slots=True)
class StatusCounts:
    """Sessions, kernels and agents by status, and the oldest session per status."""

    sessions: dict[str, int]
    kernels: dict[str, int]
    agents: dict[str, int]
    oldest_session_age: dict[str, float]


def status_counts(engine: sa.Engine, transitional: Sequence[str]) -> StatusCounts:
    """One read of every count the exporter serves as a gauge."""
    now = utcnow()
    with engine.connect() as conn:
        oldest = conn.execute(
            sa.select(sessions.c.status, sa.func.min(sessions.c.status_changed_at))
            .where(sessions.c.status.in_(list(transitional)))
            .group_by(sessions.c.status)
        )
        ages = {str(s): _age(now, t) for s, t in oldest}
        return StatusCounts(
            sessions=_by(conn, sessions.c.status),
            kernels=_by(conn, kernels.c.status),
            agents=_by(conn, agents.c.status),
            oldest_session_age=ages,
        )


def _age(now: datetime, then: Any) -> float:
    """Seconds since `then`; SQLite's MIN() hands back text, not a datetime."""
    if isinstance(then, str):
        then = datetime.fromisoformat(then)
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return max(0.0, float((now - then).total_seconds()))


@dataclass(frozen=True, slots=True)
class RunProgress:
    """A run's status and counts so far (item rows while it runs, its totals once closed)."""

    status: str
    requested: int
    succeeded: int
    failed: int
    skipped: int


def run_progress(engine: sa.Engine, run_id: int) -> RunProgress | None:
    """Where run `run_id` stands; None if there is no such run."""
    with engine.connect() as conn:
        run = conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().first()
        if run is None:
            return None
        if run["status"] != "running":
            return RunProgress(
                run["status"], run["requested"], run["succeeded"], run["failed"], run["skipped"]
            )
        ok, failed, skipped = conn.execute(
            sa.select(
                sa.func.count().filter(sa.and_(run_items.c.ok, ~run_items.c.skipped)),
                sa.func.count().filter(sa.and_(~run_items.c.ok, ~run_items.c.skipped)),
                sa.func.count().filter(run_items.c.skipped),
            ).where(run_items.c.run_id == run_id)
        ).one()
    return RunProgress("running", run["requested"], int(ok), int(failed), int(skipped))


# Sessions read per query: well under every database's limit on bound parameters.
_IDS_PER_QUERY = 500


def kernel_statuses(
    engine: sa.Engine, session_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, tuple[str, list[str]]]:
    """Each found session's status and its kernels' statuses (unknown ids are left out)."""
    found: dict[uuid.UUID, tuple[str, list[str]]] = {}
    with engine.connect() as conn:
        for start in range(0, len(session_ids), _IDS_PER_QUERY):
            chunk = list(session_ids[start : start + _IDS_PER_QUERY])
            query = sa.select(sessions.c.id, sessions.c.status).where(sessions.c.id.in_(chunk))
            for sid, status in conn.execute(query):
                found[sid] = (str(status), [])
            rows = conn.execute(
                sa.select(kernels.c.session_id, kernels.c.status).where(
                    kernels.c.session_id.in_(chunk)
                )
            )
            for sid, kstatus in rows:
                if sid in found:
                    found[sid][1].append(str(kstatus))
    return found
