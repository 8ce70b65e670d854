"""Kernel creation on one agent for many sessions: what one create_kernels task does.

A run sends one task per agent whatever the number of sessions; inside it each session
still gets its own create_kernels call, because an agent takes one session per call.
Sessions go concurrently up to CREATE_CONCURRENCY_PER_AGENT, and each is bounded by the
start timeout counted from the task's start, so the task ends well inside Celery's soft
time limit however many sessions it carries.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sokovan.constants import START_SESSION_TIMEOUT_SEC
from sokovan.errors import NotFound, describe_error
from sokovan.images import image_config_from_json
from sokovan.ports import AgentClientPool, KernelEnvirons, SecretStore, SessionRecorder
from sokovan.scheduler.launcher.agent_jobs import jsonable
from sokovan.scheduler.launcher.keys import ClusterKeys, ClusterSSHKeyPair
from sokovan.scheduler.launcher.status_data import error_info_of
from sokovan.types import JSON, AgentId, ImageConfig, ItemOutcome, KernelId, SessionId

log = logging.getLogger(__name__)

# create_kernels calls in flight per agent inside one task: the original sends them all
# at once, so the bound is generous; it only keeps one task's sockets and memory in check.
CREATE_CONCURRENCY_PER_AGENT: Final = 64

# Where the worker finds a session's cluster keypair (the item field "keypair_source").
# A session on one agent gets its keypair from the worker that calls that agent (taken
# from the pool, else made there), so the private key is never stored for the session;
# a session spread over agents shares one keypair that the launcher stored encrypted,
# and each agent's worker reads it back.
KEYPAIR_FROM_WORKER = "worker"
KEYPAIR_FROM_STORE = "secret_store"


@dataclass(frozen=True, slots=True)
class SessionCreation:
    """One session's share of an agent's task: one create_kernels call."""

    session_id: SessionId
    kernel_ids: tuple[KernelId, ...]
    configs: tuple[JSON, ...]
    cluster_info: JSON
    keypair_source: str


@dataclass(frozen=True, slots=True)
class _Context:
    pool: AgentClientPool
    secrets: SecretStore
    recorder: SessionRecorder | None
    agent_id: AgentId
    timeout: float
    deadline: float
    slots: asyncio.Semaphore
    keys: ClusterKeys
    # Keypairs taken from the pool for this task's sessions, in one statement.
    pooled: dict[SessionId, ClusterSSHKeyPair]
    # Kernel environs resolved for the task's sessions, or why they could not be.
    environs: Mapping[SessionId, Mapping[KernelId, Mapping[str, str]]] | BaseException | None


def sessions_of(items: Sequence[Mapping[str, Any]]) -> list[SessionCreation]:
    """The items of a task grouped per session, in the order they came."""
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for item in items:
        grouped.setdefault(str(item["session_id"]), []).append(item)
    return [
        SessionCreation(
            session_id=SessionId(uuid.UUID(sid)),
            kernel_ids=tuple(KernelId(uuid.UUID(str(i["kernel_id"]))) for i in group),
            configs=tuple(dict(i["config"]) for i in group),
            cluster_info=dict(group[0]["cluster_info"]),
            keypair_source=str(group[0].get("keypair_source") or KEYPAIR_FROM_STORE),
        )
        for sid, group in grouped.items()
    ]


async def create_kernels_on_agent(
    pool: AgentClientPool,
    secrets: SecretStore,
    agent_id: AgentId,
    items: Sequence[Mapping[str, Any]],
    recorder: SessionRecorder | None = None,
    *,
    start_timeout: float = START_SESSION_TIMEOUT_SEC,
    concurrency: int = CREATE_CONCURRENCY_PER_AGENT,
    environs: KernelEnvirons | None = None,
    keys: ClusterKeys | None = None,
) -> list[ItemOutcome]:
    """Runs create_kernels once per session among the items; one outcome per kernel.

    With a recorder, a session whose creation failed gets its error info stored. With
    `environs`, each kernel's environ is resolved here (items carry none); without it the
    items' configs go to the agent as they are. Keys of sessions on this agent alone come
    from `keys` (pooled, else made on demand).
    """
    keys = keys or ClusterKeys(None)
    jobs = sessions_of(items)
    mine = [j.session_id for j in jobs if j.keypair_source == KEYPAIR_FROM_WORKER]
    pooled = await keys.take_pooled(len(mine))
    ctx = _Context(
        pool=pool,
        secrets=secrets,
        recorder=recorder,
        agent_id=agent_id,
        timeout=start_timeout,
        deadline=asyncio.get_running_loop().time() + start_timeout,
        slots=asyncio.Semaphore(max(1, concurrency)),
        keys=keys,
        pooled=dict(zip(mine, pooled, strict=False)),
        environs=None if environs is None else await _resolve(environs, jobs),
    )
    results = await asyncio.gather(*(_create_session(ctx, job) for job in jobs))
    if mine:
        await keys.used()
    return [outcome for outcomes in results for outcome in outcomes]


async def _create_session(ctx: _Context, job: SessionCreation) -> list[ItemOutcome]:
    started = time.monotonic()
    bound = asyncio.timeout_at(ctx.deadline)
    try:
        async with bound, ctx.slots:
            configs = _with_environ(ctx, job)
            cluster_info = {**job.cluster_info, "ssh_keypair": await _keypair(ctx, job)}
            async with ctx.pool.acquire(ctx.agent_id) as client:
                created = await client.create_kernels(
                    job.session_id,
                    list(job.kernel_ids),
                    configs,
                    cluster_info,
                    {k: image_config_from_json(c["image"]) for k, c in _pairs(job)},
                )
    except Exception as exc:
        if isinstance(exc, TimeoutError) and bound.expired():
            log.warning("start of session %s timed out after %ss", job.session_id, ctx.timeout)
            exc = TimeoutError(f"session start exceeded {ctx.timeout}s")
        return await _failed(ctx, job, exc, started)
    infos = _match_creation_infos(list(job.kernel_ids), created)
    return [
        _outcome(ctx.agent_id, job, k, None, {"creation_info": infos.get(k, {})}, started)
        for k in job.kernel_ids
    ]


async def _resolve(
    environs: KernelEnvirons, jobs: Sequence[SessionCreation]
) -> Mapping[SessionId, Mapping[KernelId, Mapping[str, str]]] | BaseException:
    """Every session's kernel environs in one go; a failure fails the sessions, not the task."""
    images: dict[SessionId, dict[KernelId, ImageConfig]] = {
        job.session_id: {k: image_config_from_json(c["image"]) for k, c in _pairs(job)}
        for job in jobs
    }
    try:
        return await environs.kernel_environs(images)
    except Exception as exc:
        log.warning("environs of sessions %s not resolved: %s", sorted(map(str, images)), exc)
        return exc


def _with_environ(ctx: _Context, job: SessionCreation) -> list[JSON]:
    """The job's configs with each kernel's environ; raises when it could not be resolved."""
    if ctx.environs is None:
        return [dict(c) for c in job.configs]
    if isinstance(ctx.environs, BaseException):
        raise ctx.environs
    found = ctx.environs.get(job.session_id)
    if found is None or any(k not in found for k in job.kernel_ids):
        raise NotFound(f"session {job.session_id} or one of its kernels is not stored")
    return [{**c, "environ": dict(found[k])} for k, c in _pairs(job)]


async def _keypair(ctx: _Context, job: SessionCreation) -> dict[str, str]:
    """The agent's ClusterSSHKeyPair mapping for the session."""
    if job.keypair_source == KEYPAIR_FROM_WORKER:
        # Taken out so a retried session never sees the same key twice.
        pooled = ctx.pooled.pop(job.session_id, None)
        return (pooled or await ctx.keys.make()).to_agent()
    private_key, public_key = await ctx.secrets.get_ssh_keypair(job.session_id)
    return {"private_key": private_key, "public_key": public_key}


async def _failed(
    ctx: _Context, job: SessionCreation, exc: BaseException, started: float
) -> list[ItemOutcome]:
    error, error_info = describe_error(exc, with_type=True), error_info_of(exc)
    log.warning(
        "create_kernels of session %s on agent %s failed for kernels %s: %s",
        job.session_id,
        ctx.agent_id,
        [str(k) for k in job.kernel_ids],
        error,
    )
    if ctx.recorder is not None:
        try:
            await ctx.recorder.update_session_error_info(job.session_id, error_info)
        except Exception:
            log.warning("error info of session %s could not be stored", job.session_id)
    return [
        _outcome(ctx.agent_id, job, k, error, {"error_info": error_info}, started)
        for k in job.kernel_ids
    ]


def _pairs(job: SessionCreation) -> list[tuple[KernelId, JSON]]:
    return list(zip(job.kernel_ids, job.configs, strict=True))


def _match_creation_infos(
    kernel_ids: list[KernelId], created: Sequence[Mapping[str, Any]] | None
) -> dict[KernelId, JSON]:
    """Pairs the agent's creation infos with kernels, by their `id` or else by position."""
    infos = [jsonable(dict(c)) for c in (created or [])]
    by_id = {str(i.get("id")): i for i in infos if i.get("id") is not None}
    if by_id:
        return {k: by_id[str(k)] for k in kernel_ids if str(k) in by_id}
    return dict(zip(kernel_ids, infos, strict=False))


def _outcome(
    agent_id: AgentId,
    job: SessionCreation,
    kernel_id: KernelId,
    error: str | None,
    extra: JSON,
    started: float,
) -> ItemOutcome:
    return ItemOutcome(
        item_id=str(kernel_id),
        agent_id=str(agent_id),
        ok=error is None,
        error=error,
        duration=time.monotonic() - started,
        detail={"session_id": str(job.session_id), **extra},
    )
