"""reclaim_sessions over the in-memory store and a fake activity store (SC-RE-001..005)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta

import msgpack
import pytest

from sokovan import constants as C
from sokovan.activity import cpu_pct, encode_cpu_stats
from sokovan.config import Settings, load_settings
from sokovan.errors import ConfigError
from sokovan.reclaim_policy import changed_policy, effective_policies, parse_policies, policy_for
from sokovan.scheduler.handlers import handler_names
from sokovan.scheduler.handlers.reclaim_sessions import ReclaimSessions
from sokovan.stubs.activity import FakeActivity
from sokovan.stubs.store import InMemoryStore
from sokovan.types import (
    KernelId,
    KernelInfo,
    KernelStatus,
    RunId,
    SessionId,
    SessionInfo,
    SessionStatus,
    Verdict,
    utcnow,
)

RUN = RunId(1)


def session(store: InMemoryStore, age: float, group: str = "default") -> SessionInfo:
    sid = SessionId(uuid.uuid4())
    kernel = KernelInfo(KernelId(uuid.uuid4()), sid, None, KernelStatus.RUNNING)
    started = utcnow() - timedelta(seconds=age)
    return store.add_session(
        SessionInfo(sid, (kernel,), scaling_group=group, status_changed_at=started)
    )


def handler(store: InMemoryStore, activity: FakeActivity, **policy: object) -> ReclaimSessions:
    settings = Settings(reclaim_policies=json.dumps({"default": policy}))
    return ReclaimSessions(store, activity, settings)


def kid(s: SessionInfo) -> KernelId:
    return s.kernels[0].id


def test_registered() -> None:
    assert "reclaim_sessions" in handler_names()


async def test_sc_re_001_lifetime_exceeded_with_evidence() -> None:
    """SC-RE-001: past max lifetime -> TERMINATING (LIFETIME_EXCEEDED); under it untouched."""
    store = InMemoryStore()
    old, young = session(store, 7200), session(store, 60)
    activity = FakeActivity({kid(old): 0.0, kid(young): 0.0})
    plan = await handler(store, activity, max_lifetime=3600).plan(RUN, None, 0)
    assert [o.item_id for o in plan.outcomes] == [str(old.id)]
    outcome = plan.outcomes[0]
    assert outcome.verdict == Verdict.RECLAIMED
    assert outcome.detail["reason"] == C.LIFETIME_EXCEEDED_REASON
    assert outcome.detail["age_sec"] >= 7200
    assert outcome.detail["policy"]["max_lifetime"] == 3600
    assert (await store.get_session(old.id)).status == SessionStatus.TERMINATING
    assert (await store.get_session(old.id)).status_info == C.LIFETIME_EXCEEDED_REASON
    assert (await store.get_session(young.id)).status == SessionStatus.RUNNING
    assert plan.follow_ups == [("terminate_sessions", [str(old.id)])]
    assert plan.held is None


async def test_sc_re_002_idle_reaped_busy_kept() -> None:
    """SC-RE-002: idle past the timeout -> IDLE_TIMEOUT; a busy session is never reaped."""
    store = InMemoryStore()
    idle, busy = session(store, 600), session(store, 600)
    activity = FakeActivity({kid(idle): 0.2, kid(busy): 95.0})
    plan = await handler(store, activity, idle_timeout=300, idle_threshold=5).plan(RUN, None, 0)
    assert [(o.item_id, o.detail["reason"]) for o in plan.outcomes] == [
        (str(idle.id), C.IDLE_TIMEOUT_REASON)
    ]
    assert plan.outcomes[0].detail["cpu_util_pct"] == {str(kid(idle)): 0.2}
    assert (await store.get_session(busy.id)).status == SessionStatus.RUNNING
    assert busy.id in activity.stamps  # a busy read is activity


async def test_sc_re_002_touch_counts_as_activity() -> None:
    """SC-RE-002: a manager's touch (sokovan.session.touch) resets the idle clock."""
    store = InMemoryStore()
    touched = session(store, 600)
    activity = FakeActivity({kid(touched): 0.0})
    await activity.touch({touched.id: utcnow() - timedelta(seconds=10)})
    plan = await handler(store, activity, idle_timeout=300).plan(RUN, None, 0)
    assert plan.outcomes == ()
    assert (await store.get_session(touched.id)).status == SessionStatus.RUNNING


@pytest.mark.parametrize("threshold", [0.5, 5.0, 50.0])
@pytest.mark.parametrize("stamped_ago", [None, 10**5])
async def test_sc_re_002_a_busy_session_is_never_reclaimed_as_idle(
    threshold: float, stamped_ago: int | None
) -> None:
    """SC-RE-002: Given sessions long idle by every clock, each with one kernel at or above the
    threshold among idle ones, When reclaim judges them under a lifetime-free policy, Then
    none is reclaimed and each is stamped active now; the all-idle one alone goes."""
    store = InMemoryStore()
    now = utcnow()
    busy: list[SessionInfo] = []
    activity = FakeActivity()
    for level in (threshold, threshold * 2, 100.0):
        sid = SessionId(uuid.uuid4())
        kernels = tuple(
            KernelInfo(KernelId(uuid.uuid4()), sid, None, KernelStatus.RUNNING) for _ in range(3)
        )
        s = store.add_session(SessionInfo(sid, kernels, status_changed_at=now - timedelta(days=3)))
        activity.cpu.update({kernels[0].id: 0.0, kernels[1].id: level, kernels[2].id: 0.0})
        if stamped_ago is not None:
            activity.stamps[sid] = now - timedelta(seconds=stamped_ago)
        busy.append(s)
    idle = session(store, 3 * 86400)
    activity.cpu[kid(idle)] = 0.0
    policy = {"idle_timeout": 60, "idle_threshold": threshold, "brake_share": 1}
    plan = await handler(store, activity, **policy).plan(RUN, None, 0)
    assert [o.item_id for o in plan.outcomes] == [str(idle.id)]
    for s in busy:
        assert (await store.get_session(s.id)).status == SessionStatus.RUNNING
        assert activity.stamps[s.id] >= now


async def test_missing_figures_are_not_idleness() -> None:
    store = InMemoryStore()
    known, _unknown = session(store, 600), session(store, 600)
    activity = FakeActivity({kid(known): 0.0})
    plan = await handler(store, activity, idle_timeout=300).plan(RUN, None, 0)
    assert [o.item_id for o in plan.outcomes] == [str(known.id)]


async def test_sc_re_003_grace_period() -> None:
    """SC-RE-003: nothing is reclaimed within the grace period, whatever its activity."""
    store = InMemoryStore()
    fresh = session(store, 100)
    activity = FakeActivity({kid(fresh): 0.0})
    plan = await handler(store, activity, max_lifetime=10, idle_timeout=10, grace_period=600).plan(
        RUN, None, 0
    )
    assert plan.outcomes == ()
    assert (await store.get_session(fresh.id)).status == SessionStatus.RUNNING


async def test_sc_re_004_report_only() -> None:
    """SC-RE-004: report-only records would-reclaim outcomes and terminates nothing."""
    store = InMemoryStore()
    old = session(store, 7200)
    activity = FakeActivity({kid(old): 0.0})
    plan = await handler(store, activity, max_lifetime=60, report_only=True).plan(RUN, None, 0)
    assert [o.verdict for o in plan.outcomes] == [Verdict.WOULD_RECLAIM]
    assert plan.outcomes[0].error == f"would reclaim: {C.LIFETIME_EXCEEDED_REASON}"
    assert plan.follow_ups == ()
    assert (await store.get_session(old.id)).status == SessionStatus.RUNNING


async def test_sc_re_005_brake_share() -> None:
    """SC-RE-005: more than the brake share at once -> held, nothing reclaimed."""
    store = InMemoryStore()
    sessions = [session(store, 7200) for _ in range(4)]
    activity = FakeActivity({kid(s): 0.0 for s in sessions})
    plan = await handler(store, activity, idle_timeout=60, brake_share=0.5).plan(RUN, None, 0)
    assert plan.held is not None and "brake share" in plan.held
    assert {o.verdict for o in plan.outcomes} == {Verdict.BRAKED}
    for s in sessions:
        assert (await store.get_session(s.id)).status == SessionStatus.RUNNING


async def test_sc_re_005_brake_on_missing_figures() -> None:
    """SC-RE-005: utilization missing for every kernel -> held, even lifetime waits."""
    store = InMemoryStore()
    old = session(store, 7200)
    plan = await handler(store, FakeActivity(), idle_timeout=60, max_lifetime=60).plan(RUN, None, 0)
    assert plan.held is not None and "missing" in plan.held
    assert (await store.get_session(old.id)).status == SessionStatus.RUNNING


async def test_no_policy_reclaims_nothing() -> None:
    store = InMemoryStore()
    session(store, 10**6)
    plan = await ReclaimSessions(store, FakeActivity(), Settings()).plan(RUN, None, 0)
    assert plan.requested == 0 and plan.outcomes == ()


async def test_sc_re_004_a_policy_set_with_the_cli_replaces_the_setting_s() -> None:
    """SC-RE-004: Given the setting's default in report-only mode, When an operator stores an
    enforcing default (`sokovan reclaim set default --enforce`), Then the next run reclaims."""
    store = InMemoryStore()
    old = session(store, 7200)
    activity = FakeActivity({kid(old): 0.0})
    reclaim = handler(store, activity, max_lifetime=60, report_only=True)
    assert [o.verdict for o in (await reclaim.plan(RUN, None, 0)).outcomes] == [
        Verdict.WOULD_RECLAIM
    ]
    base = policy_for(parse_policies(reclaim.setting), "default")
    enforcing = changed_policy(base, "default", {"report_only": False})
    store.reclaim_policies["default"] = json.dumps(enforcing.body())
    plan = await reclaim.plan(RUN, None, 0)
    assert [o.verdict for o in plan.outcomes] == [Verdict.RECLAIMED]
    assert plan.outcomes[0].detail["policy"]["max_lifetime"] == 60
    assert (await store.get_session(old.id)).status == SessionStatus.TERMINATING


def test_stored_policies_replace_whole_entries() -> None:
    setting = '{"default": {"idle_timeout": 60}, "gpu": {"max_lifetime": 5, "grace_period": 9}}'
    stored = {"gpu": json.dumps({"idle_timeout": 30}), "cpu": json.dumps({"max_lifetime": 7})}
    policies = effective_policies(setting, stored)
    assert policies["gpu"].idle_timeout == 30 and policies["gpu"].max_lifetime == 0
    assert policies["gpu"].grace_period == 0  # the stored entry replaces, not merges
    assert policies["cpu"].max_lifetime == 7 and policies["default"].idle_timeout == 60


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"brake_share": 1.5}, "brake_share"),
        ({"idle_threshold": float("nan")}, "idle_threshold"),
        ({"max_lifetime": float("inf")}, "max_lifetime"),
        ({"idle_timeout": -1}, "idle_timeout"),
    ],
)
def test_a_bad_change_names_the_field(changes: dict[str, float], says: str) -> None:
    with pytest.raises(ConfigError, match=says) as e:
        changed_policy(None, "gpu", changes)
    assert "'gpu'" in str(e.value)


def test_policies_per_group_with_default() -> None:
    policies = parse_policies('{"default": {"idle_timeout": 60}, "gpu": {"max_lifetime": 5}}')
    gpu, other = policy_for(policies, "gpu"), policy_for(policies, "cpu")
    assert gpu is not None and gpu.max_lifetime == 5 and gpu.idle_timeout == 0
    assert other is not None and other.idle_timeout == 60
    assert policy_for(parse_policies(""), "gpu") is None


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("{", "not valid JSON"),
        ('{"gpu": {"idle_timeut": 5}}', "unknown field"),
        ('{"gpu": {"max_lifetime": -1}}', "max_lifetime"),
        ('{"gpu": {"brake_share": 2}}', "brake_share"),
        ('{"gpu": {"report_only": "yes"}}', "report_only"),
    ],
)
def test_bad_policies_name_the_setting(raw: str, says: str) -> None:
    with pytest.raises(ConfigError, match="SOKOVAN_RECLAIM_POLICIES") as e:
        load_settings({"SOKOVAN_RECLAIM_POLICIES": raw}, dotenv=None)
    assert says in str(e.value)


def test_stats_format_is_backend_ai_s() -> None:
    raw = encode_cpu_stats(250.0, cpu_used_msec=1234.5)
    decoded = msgpack.unpackb(raw, raw=False)
    assert decoded["cpu_util"] == {
        "current": "250.000",
        "capacity": "1000.000",
        "pct": "25.00",
        "unit_hint": "millicores",
    }
    assert cpu_pct(raw) == 25.0
    assert cpu_pct(b"\xc1garbage") is None


def test_aware_times_only() -> None:
    assert isinstance(utcnow(), datetime) and utcnow().tzinfo is not None
