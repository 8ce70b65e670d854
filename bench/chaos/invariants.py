"""The invariants of SC-CV-007, read from SQL, the run ledger and the agents' process tables.

Each check is a row: its name, whether it holds, a figure, and the ids behind a failure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from bench.chaos.rig import ChaosCluster
from bench.chaos.workload import Tracked
from sokovan.db.schema import agents, kernels, leftover_kernels, run_items, runs, sessions
from sokovan.records import SLOT_HOLDING_LEFTOVERS
from sokovan.types import TERMINAL_SESSION_STATUSES, SessionStatus

TRANSITIONAL = frozenset(
    str(s)
    for s in (
        SessionStatus.SCHEDULED,
        SessionStatus.PREPARING,
        SessionStatus.PULLING,
        SessionStatus.PREPARED,
        SessionStatus.CREATING,
        SessionStatus.TERMINATING,
    )
)
ENDED = frozenset(str(s) for s in TERMINAL_SESSION_STATUSES)
PENDING = str(SessionStatus.PENDING)
RUNNING = str(SessionStatus.RUNNING)
# Runs that end kernels, and the verdicts that are not an end (the sweep's "still running").
ENDING_HANDLERS = ("terminate_sessions", "sweep_stale_kernels")
NOT_AN_END = frozenset({"alive"})
SHOWN = 5  # ids named in a failed row


@dataclass(frozen=True, slots=True)
class Check:
    """One invariant row."""

    name: str
    ok: bool
    figure: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the checks read, at one moment."""

    sessions: dict[str, tuple[str, str | None]]  # id -> status, status_info
    kernels: list[dict[str, Any]]
    capacity: dict[str, dict[str, Decimal]]
    running: dict[str, set[str]]  # agent -> kernel ids whose process is alive
    # Ended kernels whose slots stay held while a create may have left their container.
    holding: frozenset[str] = frozenset()


def snapshot(cluster: ChaosCluster) -> Snapshot:
    """Reads SQL and each agent's live kernel processes."""
    with cluster.env.engine.connect() as conn:
        srows = conn.execute(sa.select(sessions.c.id, sessions.c.status, sessions.c.status_info))
        by_session = {str(r.id): (str(r.status), r.status_info) for r in srows}
        krows = conn.execute(
            sa.select(
                kernels.c.id,
                kernels.c.session_id,
                kernels.c.agent_id,
                kernels.c.status,
                kernels.c.requested_slots,
            )
        )
        kernel_list = [
            {**r._asdict(), "id": str(r.id), "session_id": str(r.session_id)} for r in krows
        ]
        capacity = {
            str(r.id): _slots(r.capacity)
            for r in conn.execute(sa.select(agents.c.id, agents.c.capacity))
        }
        holding = frozenset(
            str(k)
            for k in conn.execute(
                sa.select(leftover_kernels.c.kernel_id).where(
                    leftover_kernels.c.destroyed_at.is_(None),
                    leftover_kernels.c.reason.in_(sorted(SLOT_HOLDING_LEFTOVERS)),
                )
            ).scalars()
        )
    running = {aid: set(cluster.kernel_processes(aid)) for aid in cluster.agent_ids}
    return Snapshot(by_session, kernel_list, capacity, running, holding)


def check_all(cluster: ChaosCluster, tracked: Sequence[Tracked]) -> list[Check]:
    """Every invariant but the new session's, at this moment."""
    snap = snapshot(cluster)
    return [
        transitional(snap),
        terminates_done(snap, tracked),
        *slots_match(snap),
        counted_once(cluster.env.engine),
        creates_exist(snap, tracked),
        processes_up(cluster),
    ]


def processes_up(cluster: ChaosCluster) -> Check:
    """No process of the cluster exited on its own (beside SC-CV-007: without it, no end)."""
    gone = cluster.exited()
    figure = f"{len(gone)} exited on their own"
    if cluster.revived:
        figure += f"; restarted as a supervisor would: {'; '.join(cluster.revived)[:300]}"
    return Check("every process up (but for the soak's kills)", not gone, figure, _name(gone))


def transitional(snap: Snapshot) -> Check:
    """No session or kernel in a transitional state; PENDING only if nothing would fit."""
    stuck = {sid: st for sid, (st, _) in snap.sessions.items() if st in TRANSITIONAL}
    kstuck = {k["id"]: k["status"] for k in snap.kernels if k["status"] in TRANSITIONAL}
    pending = [sid for sid, (st, _) in snap.sessions.items() if st == PENDING]
    free = _free(snap)
    placeable = [sid for sid in pending if _fits(_first_slots(snap, sid), free)]
    ok = not stuck and not kstuck and not placeable
    figure = (
        f"{len(stuck)} sessions, {len(kstuck)} kernels transitional; "
        f"{len(pending)} PENDING ({len(placeable)} that would fit)"
    )
    detail = _name({**stuck, **{k: f"kernel {v}" for k, v in kstuck.items()}})
    if placeable:
        detail += f" PENDING but placeable: {', '.join(placeable[:SHOWN])}"
    return Check("no session or kernel in a transitional state", ok, figure, detail.strip())


def terminates_done(snap: Snapshot, tracked: Sequence[Tracked]) -> Check:
    """Every acknowledged terminate ended its session."""
    asked = [t.session_id for t in tracked if t.terminate_at and t.session_id]
    left = {s: snap.sessions.get(s, ("missing", None))[0] for s in asked}
    left = {s: st for s, st in left.items() if st not in ENDED}
    figure = f"{len(asked) - len(left)} of {len(asked)} ended"
    return Check("every requested terminate done", not left, figure, _name(left))


def slots_match(snap: Snapshot) -> list[Check]:
    """Per agent: slots held in SQL = slots of its kernels whose process is alive."""
    checks = []
    slots_of = {k["id"]: _slots(k["requested_slots"]) for k in snap.kernels}
    for aid in sorted(snap.running):
        held = {k["id"] for k in snap.kernels if k["agent_id"] == aid and k["status"] not in ENDED}
        alive = snap.running[aid]
        sql_cpu = _cpu(slots_of.get(k, {}) for k in held)
        live_cpu = _cpu(slots_of.get(k, {}) for k in alive)
        figure = (
            f"SQL {len(held)} kernels cpu={sql_cpu:g}, "
            f"agent runs {len(alive)} kernels cpu={live_cpu:g}"
        )
        detail = ""
        if held - alive:
            detail += f"held in SQL, not running: {', '.join(sorted(held - alive)[:SHOWN])} "
        if alive - held:
            detail += f"running, not held in SQL: {', '.join(sorted(alive - held)[:SHOWN])}"
        name = f"{aid}: occupied slots = live kernels' = what it runs"
        checks.append(Check(name, held == alive, figure, detail.strip()))
    return checks


def counted_once(engine: sa.Engine) -> Check:
    """No kernel counted as ended by more than one terminate or sweep item."""
    query = (
        sa.select(run_items.c.item_id, run_items.c.evidence, runs.c.handler)
        .select_from(run_items.join(runs, run_items.c.run_id == runs.c.id))
        .where(
            runs.c.handler.in_(ENDING_HANDLERS),
            run_items.c.counted,
            run_items.c.ok,
            sa.not_(run_items.c.skipped),
        )
    )
    with engine.connect() as conn:
        rows = list(conn.execute(query))
    ends = Counter(
        item for item, evidence, _ in rows if (evidence or {}).get("verdict") not in NOT_AN_END
    )
    twice = {k: f"counted {n} times" for k, n in ends.items() if n > 1}
    figure = f"{len(twice)} of {len(ends)} ended kernels counted more than once"
    return Check("no kernel counted twice in the ledger", not twice, figure, _name(twice))


def creates_exist(snap: Snapshot, tracked: Sequence[Tracked]) -> Check:
    """Every acknowledged create is RUNNING on its agents or ended with a reason."""
    alive = set().union(*snap.running.values()) if snap.running else set()
    by_session: dict[str, list[dict[str, Any]]] = {}
    for k in snap.kernels:
        by_session.setdefault(k["session_id"], []).append(k)
    acked = [t.session_id for t in tracked if t.acked and t.session_id]
    bad: dict[str, str] = {}
    for sid in acked:
        status, info = snap.sessions.get(sid, ("missing", None))
        if status == RUNNING:
            dead = [k["id"] for k in by_session.get(sid, []) if k["id"] not in alive]
            if dead:
                bad[sid] = f"RUNNING but kernel {dead[0]} not running on its agent"
        elif status in ENDED:
            if not info:
                bad[sid] = f"{status} without a reason"
        elif status != PENDING and status not in TRANSITIONAL:
            bad[sid] = status
    figure = f"{len(acked) - len(bad)} of {len(acked)} acknowledged creates accounted for"
    return Check("every acknowledged create exists", not bad, figure, _name(bad))


def _name(found: Mapping[str, str]) -> str:
    shown = ", ".join(f"{k} ({v})" for k, v in list(found.items())[:SHOWN])
    more = f" and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
    return shown + more


def _slots(raw: Any) -> dict[str, Decimal]:
    return {str(k): Decimal(str(v)) for k, v in (raw or {}).items()}


def _cpu(slots: Iterable[Mapping[str, Decimal]]) -> float:
    return float(sum((s.get("cpu", Decimal(0)) for s in slots), Decimal(0)))


def _free(snap: Snapshot) -> dict[str, dict[str, Decimal]]:
    """Agent -> capacity left after the slots its live kernels hold, and those whose container
    a create may have left (the scheduler keeps those slots held too)."""
    free = {aid: dict(cap) for aid, cap in snap.capacity.items()}
    for k in snap.kernels:
        live = k["status"] not in ENDED and k["status"] != PENDING
        if k["agent_id"] in free and (live or k["id"] in snap.holding):
            for name, amount in _slots(k["requested_slots"]).items():
                free[k["agent_id"]][name] = free[k["agent_id"]].get(name, Decimal(0)) - amount
    return free


def _first_slots(snap: Snapshot, sid: str) -> dict[str, Decimal]:
    for k in snap.kernels:
        if k["session_id"] == sid:
            return _slots(k["requested_slots"])
    return {}


def _fits(slots: Mapping[str, Decimal], free: Mapping[str, Mapping[str, Decimal]]) -> bool:
    return any(
        all(left.get(n, Decimal(0)) >= v for n, v in slots.items()) for left in free.values()
    )
