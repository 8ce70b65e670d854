"""The schema, ledger, repository and secret store on a real PostgreSQL server (pgserver)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from sokovan.db.engine import current_revision, head_revision
from sokovan.db.ledger import RunLedger
from sokovan.db.repository import NewKernel, SchedulerRepository
from sokovan.db.secrets import SqlSecretStore
from sokovan.records import AgentRow
from sokovan.types import (
    AgentId,
    AgentLiveness,
    ImageConfig,
    ItemOutcome,
    KernelId,
    KernelStatus,
    ResourceSlot,
    RunStatus,
    RunTrigger,
    SessionId,
    SessionStatus,
    utcnow,
)
from tests.pg import postgres_engine

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("postgres")]


@pytest.fixture(scope="module")
def pg_engine() -> Iterator[sa.Engine]:
    """A throwaway PostgreSQL server with the migrations applied."""
    with postgres_engine() as engine:
        yield engine


def test_migrations_and_ledger_on_postgres(pg_engine: sa.Engine) -> None:
    """The same migrations and ledger code run unchanged on PostgreSQL: counts, dedupe, pause."""
    assert current_revision(pg_engine) == head_revision()
    ledger = RunLedger(pg_engine)
    run_id = ledger.open_run("terminate_sessions", RunTrigger.API, requested=3)
    outcomes = [
        ItemOutcome("k1", "a1", ok=True),
        ItemOutcome("k2", "a1", ok=False, error="boom"),
        ItemOutcome("k3", None, ok=False, skipped=True, error="no agent assigned"),
    ]
    assert ledger.record_items(run_id, outcomes) == 3
    assert ledger.record_items(run_id, outcomes[:2]) == 0  # redelivered: counted once
    run = ledger.close_run(run_id)
    assert run is not None and run.status == RunStatus.PARTIAL
    assert (run.succeeded, run.failed, run.skipped) == (1, 1, 1)
    assert run.finished_at is not None and run.finished_at.tzinfo is not None
    assert ledger.close_run(run_id) is None  # a duplicate callback changes nothing
    ledger.set_paused("sweep_stale_kernels", True, "maintenance")
    ledger.set_paused("sweep_stale_kernels", False)
    assert ledger.is_paused("sweep_stale_kernels") is False


async def test_repository_and_secrets_on_postgres(pg_engine: sa.Engine) -> None:
    """Agents, images, sessions with guarded transitions and encrypted keys on PostgreSQL."""
    from cryptography.fernet import Fernet

    repo = SchedulerRepository(pg_engine)
    repo.upsert_agent(
        AgentRow(AgentId("pg-a1"), "tcp://127.0.0.1:1", capacity=ResourceSlot.from_json({"cpu": 4}))
    )
    repo.upsert_agent(
        AgentRow(AgentId("pg-a1"), "tcp://127.0.0.1:2", capacity=ResourceSlot.from_json({"cpu": 8}))
    )
    assert repo.get_agent("pg-a1").rpc_addr == "tcp://127.0.0.1:2"
    repo.add_image(ImageConfig(canonical="img:1"))
    assert "img:1" in repo.image_configs(["img:1"])
    sid = SessionId(uuid.uuid4())
    kid = KernelId(uuid.uuid4())
    repo.create_session(
        session_id=sid,
        name="pg",
        status=SessionStatus.RUNNING,
        kernels_=[NewKernel(kid, AgentId("pg-a1"), "img:1", ResourceSlot.from_json({"cpu": 1}))],
    )
    assert repo.transition_kernels([kid], KernelStatus.TERMINATED, [KernelStatus.RUNNING]) == [kid]
    # A late, duplicate move cannot take the kernel backwards.
    assert repo.transition_kernels([kid], KernelStatus.RUNNING, [KernelStatus.CREATING]) == []
    assert repo.kernel_statuses([kid]) == {kid: KernelStatus.TERMINATED}
    secrets = SqlSecretStore(pg_engine, Fernet.generate_key())
    secrets.put_ssh_keypair(sid, "PRIVATE", "ssh-rsa AAA")
    assert secrets.get_ssh_keypair(sid) == ("PRIVATE", "ssh-rsa AAA")


async def test_keypair_pool_hands_each_key_out_once_on_postgres(pg_engine: sa.Engine) -> None:
    """Concurrent takers on PostgreSQL share the pool without a key given twice or lost."""
    from tests.integration.test_keypair_pool import assert_concurrent_takes_are_disjoint

    await assert_concurrent_takes_are_disjoint(pg_engine)


def test_liveness_and_leftovers_on_postgres(pg_engine: sa.Engine) -> None:
    """Agent liveness (coalesce of lost_since) and instance markers on PostgreSQL."""
    repo = SchedulerRepository(pg_engine)
    agent = AgentId("pg-live")
    repo.upsert_agent(AgentRow(agent, "tcp://127.0.0.1:3"))
    first = utcnow()
    repo.mark_liveness([agent], AgentLiveness.LOST, first)
    repo.mark_liveness([agent], AgentLiveness.LOST, utcnow())
    (contact,) = [c for c in repo.agent_contacts() if c.id == agent]
    assert contact.status is AgentLiveness.LOST and contact.lost_since == first
    repo.record_contact(agent, "boot-1", utcnow())
    repo.record_contact(agent, "boot-2", utcnow())
    identity = repo.agent_identities([agent])[agent]
    assert identity.instance_id == "boot-2" and identity.instance_since is not None


def test_leftovers_hold_slots_on_postgres(pg_engine: sa.Engine) -> None:
    """Slots held by a kernel whose container may run, and leftovers reopened, on PostgreSQL."""
    from tests.integration.test_leftover_rows import assert_leftovers_hold_slots

    assert_leftovers_hold_slots(pg_engine)


def test_restarts_and_kernels_on_restarted_agents_on_postgres(pg_engine: sa.Engine) -> None:
    """The sweep's restart reads on PostgreSQL: instance_since compared as timestamptz, kernel
    ids of restarted agents as the hyphenated text sweep_pages gives."""
    from datetime import timedelta

    repo = SchedulerRepository(pg_engine)
    agent = AgentId("pg-restarted")
    repo.upsert_agent(AgentRow(agent, "tcp://127.0.0.1:4"))
    repo.add_image(ImageConfig(canonical="img:1"))
    now = utcnow()
    started = now - timedelta(seconds=20)
    repo.record_instance(agent, "boot-1", now)
    repo.record_instance(agent, "boot-2", now, started)
    assert repo.agents_restarted_since(now - timedelta(seconds=60))[agent] == started
    assert agent not in repo.agents_restarted_since(now - timedelta(seconds=10))
    kid = KernelId(uuid.uuid4())
    repo.create_session(
        session_id=SessionId(uuid.uuid4()),
        name="pg-restart",
        status=SessionStatus.RUNNING,
        kernels_=[NewKernel(kid, agent, "img:1", ResourceSlot.from_json({"cpu": 1}))],
    )
    repo.transition_kernels([kid], KernelStatus.RUNNING, list(KernelStatus))
    running = [KernelStatus.RUNNING]
    assert repo.sweep_ids_on_agents(running, [agent]) == [str(kid)]
    assert repo.sweep_ids_on_agents(running, [agent], only=[KernelId(uuid.uuid4())]) == []
    pages = [row[0] for page in repo.sweep_pages(running, page_size=100) for row in page]
    assert str(kid) in pages


def test_reclaim_policies_on_postgres(pg_engine: sa.Engine) -> None:
    """SC-RE-004: a policy set with the CLI is stored, replaced and forgotten on PostgreSQL."""
    repo = SchedulerRepository(pg_engine)
    repo.store_reclaim_policy("gpu", '{"report_only": true}')
    repo.store_reclaim_policy("gpu", '{"report_only": false, "idle_timeout": 60}')
    assert repo.stored_reclaim_policies() == {"gpu": '{"report_only": false, "idle_timeout": 60}'}
    assert repo.drop_reclaim_policy("gpu") is True
    assert repo.drop_reclaim_policy("gpu") is False
    assert repo.stored_reclaim_policies() == {}
