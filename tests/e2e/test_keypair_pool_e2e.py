"""Cluster keypairs from the pool on a real worker: filled ahead, taken once, refilled."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from sokovan.db.schema import keypair_pool, session_secrets
from sokovan.types import SessionStatus
from tests.cluster import Cluster, running_cluster
from tests.workers import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

POOL = 6


def pooled_public_keys(c: Cluster) -> set[str]:
    with c.senv.engine.connect() as conn:
        return {str(r[0]) for r in conn.execute(sa.select(keypair_pool.c.ssh_public_key))}


async def test_sessions_take_pooled_keys_once_and_the_launch_kicks_a_refill(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-LA-016 with the pool: keys made ahead by worker tasks start sessions, never twice.

    Given a pool of 6 filled by the refill task, when a single-kernel and a two-agent
    session start, each takes one pooled key (the cluster session's stored key is one of
    them, and gone from the pool); when two more start the pool falls below half and the
    launch asks for a refill, which brings it back to 6 without a beat."""
    settings = {"keypair_pool_size": str(POOL), "launch_interval": "2"}
    async with running_cluster(tmp_path, valkey_url, settings=settings, runtime="sim") as c:
        answer = c.send("sokovan.keypairs.refill")
        assert answer["keys"] == POOL, answer
        wait_for(lambda: len(pooled_public_keys(c)) == POOL, timeout=60, what="a full pool")
        before = pooled_public_keys(c)
        single = c.create(name="single")
        multi = c.create(name="multi", kernels=2, cluster_mode="multi-node")
        for sid in (single, multi):
            assert c.wait_status(sid, SessionStatus.RUNNING).status == SessionStatus.RUNNING
        left = pooled_public_keys(c)
        assert len(left) == POOL - 2 and left < before
        with c.senv.engine.connect() as conn:
            stored = conn.execute(
                sa.select(session_secrets.c.ssh_public_key).where(
                    session_secrets.c.session_id == multi
                )
            ).scalar_one()
        assert stored in before - left  # the cluster session's key came from the pool
        more = [c.create(name=f"more-{i}") for i in range(2)]
        for sid in more:
            assert c.wait_status(sid, SessionStatus.RUNNING).status == SessionStatus.RUNNING
        wait_for(lambda: len(pooled_public_keys(c)) >= POOL, timeout=90, what="a refilled pool")
        assert not pooled_public_keys(c) & (before - left)  # a taken key never comes back
