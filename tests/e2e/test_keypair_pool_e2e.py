"""Cluster keypairs from the pool on a real worker: filled ahead, taken once, refilled."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from sokovan.constants import SSH_KEY_COMMENT
from sokovan.db.schema import keypair_pool, session_secrets
from sokovan.db.secrets import SqlSecretStore, load_or_create_key
from sokovan.types import SessionId, SessionStatus
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


def stored_keypair(c: Cluster, sid: SessionId) -> tuple[str, str]:
    """The cluster keypair stored for a session spread over agents, decrypted."""
    key = load_or_create_key(c.senv.settings.secret_key, c.senv.settings.var_dir)
    return SqlSecretStore(c.senv.engine, key).get_ssh_keypair(sid)


def assert_openssh_ed25519(private_key: str, public_key: str) -> None:
    """An OpenSSH Ed25519 private key whose public half is the given authorized-keys line."""
    assert public_key.startswith("ssh-ed25519 ") and public_key.endswith(SSH_KEY_COMMENT)
    assert private_key.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    loaded = serialization.load_ssh_private_key(private_key.encode(), password=None)
    assert isinstance(loaded, ed25519.Ed25519PrivateKey)
    derived = loaded.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    assert public_key.split()[:2] == derived.decode().split()[:2]


async def test_ed25519_setting_starts_sessions_with_openssh_ed25519_keys(
    tmp_path: Path, valkey_url: str
) -> None:
    """SC-LA-016 with SOKOVAN_KEYPAIR_TYPE=ed25519: pooled and on-demand keys are Ed25519.

    Given workers set to make Ed25519 cluster keys, when the refill task fills the pool,
    every pooled key is an OpenSSH Ed25519 key; a multi-node session spread over two agents
    runs with one of them (its stored pair: an OpenSSH private key whose public half is the
    authorized-keys line); with the pool emptied, the next such session runs with a key made
    on demand, of the same kind, and a single-kernel session (whose key only its agent sees)
    runs too."""
    settings = {"keypair_pool_size": str(POOL), "keypair_type": "ed25519"}
    async with running_cluster(tmp_path, valkey_url, settings=settings, runtime="sim") as c:
        answer = c.send("sokovan.keypairs.refill")
        assert answer["keys"] == POOL, answer
        wait_for(lambda: len(pooled_public_keys(c)) == POOL, timeout=60, what="a full pool")
        before = pooled_public_keys(c)
        assert all(k.startswith("ssh-ed25519 ") for k in before), before
        pooled = c.create(name="pooled", kernels=2, cluster_mode="multi-node")
        assert c.wait_status(pooled, SessionStatus.RUNNING).status == SessionStatus.RUNNING
        private_key, public_key = stored_keypair(c, pooled)
        assert public_key in before
        assert_openssh_ed25519(private_key, public_key)
        with c.senv.engine.begin() as conn:
            conn.execute(keypair_pool.delete())
        made = c.create(name="made", kernels=2, cluster_mode="multi-node")
        single = c.create(name="single")
        for sid in (made, single):
            assert c.wait_status(sid, SessionStatus.RUNNING).status == SessionStatus.RUNNING
        private_key, public_key = stored_keypair(c, made)
        assert public_key not in before
        assert_openssh_ed25519(private_key, public_key)
