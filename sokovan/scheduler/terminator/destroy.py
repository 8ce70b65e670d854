"""Destroying kernels: planning per-agent batches and running one agent's batch."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sokovan.errors import describe_error
from sokovan.ports import AgentClient, AgentClientPool
from sokovan.types import (
    JSON,
    AgentBatch,
    AgentId,
    ItemOutcome,
    KernelId,
    KernelTerminationResult,
    ResourceSlot,
    SessionId,
    SessionInfo,
)

log = logging.getLogger(__name__)

NO_AGENT_ERROR = "no agent assigned"


@dataclass(frozen=True, slots=True)
class DestroyPlan:
    """Destroy jobs grouped per agent, and the kernels that could not be planned."""

    batches: tuple[AgentBatch, ...]
    skipped: tuple[ItemOutcome, ...]

    @property
    def planned(self) -> int:
        return sum(len(b.items) for b in self.batches)


@dataclass(frozen=True, slots=True)
class DestroyJob:
    """One parsed destroy item."""

    kernel_id: KernelId
    session_id: SessionId
    reason: str
    occupied_slots: ResourceSlot
    attempt: int = 1  # this kernel's how-many-th destroy try


def plan_destroy(sessions: Sequence[SessionInfo], reason: str) -> DestroyPlan:
    """Groups one destroy item per kernel by agent; kernels without an agent are skipped."""
    per_agent: dict[AgentId, list[JSON]] = {}
    skipped: list[ItemOutcome] = []
    seen: set[KernelId] = set()
    for session in sessions:
        # Backend.AI passes the session's recorded termination reason to the agent.
        kernel_reason = session.status_info or reason
        for kernel in session.kernels:
            if kernel.id in seen:
                log.warning(
                    "kernel %s listed twice (session %s); destroyed once", kernel.id, session.id
                )
                continue
            seen.add(kernel.id)
            item: JSON = {
                "kernel_id": str(kernel.id),
                "session_id": str(session.id),
                "reason": kernel_reason,
                "occupied_slots": kernel.occupied_slots.to_json(),
            }
            tried = int(kernel.status_data.get("attempts") or 0)
            if tried:  # a retry says which try it is; a first try stays as it always was
                item["attempt"] = tried + 1
            if kernel.agent_id:
                per_agent.setdefault(kernel.agent_id, []).append(item)
                continue
            log.warning(
                "kernel %s of session %s has no agent; not destroyed", kernel.id, session.id
            )
            skipped.append(_no_agent_outcome(item))
    batches = tuple(AgentBatch(agent_id, tuple(items)) for agent_id, items in per_agent.items())
    return DestroyPlan(batches, tuple(skipped))


def _no_agent_outcome(item: JSON) -> ItemOutcome:
    detail = {"session_id": item["session_id"], "occupied_slots": item["occupied_slots"]}
    return ItemOutcome(
        item_id=item["kernel_id"],
        agent_id=None,
        ok=False,
        error=NO_AGENT_ERROR,
        detail=detail,
        skipped=True,
    )


def parse_destroy_item(item: Mapping[str, Any]) -> DestroyJob:
    """Reads one JSON destroy item; raises ValueError naming what is wrong."""
    if not isinstance(item, Mapping):
        raise ValueError(f"malformed item: expected an object, got {type(item).__name__}")
    missing = [k for k in ("kernel_id", "session_id") if k not in item]
    if missing:
        raise ValueError(f"malformed item: missing {', '.join(missing)}")
    try:
        kernel_id = KernelId(uuid.UUID(str(item["kernel_id"])))
    except ValueError:
        raise ValueError(f"malformed item: bad kernel_id {item['kernel_id']!r}") from None
    try:
        session_id = SessionId(uuid.UUID(str(item["session_id"])))
    except ValueError:
        raise ValueError(f"malformed item: bad session_id {item['session_id']!r}") from None
    try:
        slots = ResourceSlot.from_json(item.get("occupied_slots"))
    except (ArithmeticError, AttributeError, TypeError, ValueError):
        raise ValueError(
            f"malformed item: bad occupied_slots {item.get('occupied_slots')!r}"
        ) from None
    try:
        attempt = max(1, int(item.get("attempt") or 1))
    except (TypeError, ValueError):
        attempt = 1
    return DestroyJob(kernel_id, session_id, str(item.get("reason") or "unknown"), slots, attempt)


async def destroy_with_client(
    client: AgentClient, agent_id: AgentId, job: DestroyJob
) -> KernelTerminationResult:
    """Destroys one kernel; an agent error becomes a failed result, not an exception."""
    try:
        await client.destroy_kernel(
            job.kernel_id, job.session_id, job.reason, suppress_events=False
        )
    except Exception as e:
        log.warning("destroying kernel %s on agent %s failed: %s", job.kernel_id, agent_id, e)
        return _failed(job, agent_id, describe_error(e))
    return KernelTerminationResult(job.kernel_id, agent_id, job.occupied_slots, success=True)


async def destroy_kernels_on_agent(
    pool: AgentClientPool,
    agent_id: AgentId,
    items: Sequence[Mapping[str, Any]],
    concurrency: int,
) -> list[ItemOutcome]:
    """Destroys one agent's kernels with bounded concurrency; one outcome per item, in order."""
    outcomes: list[ItemOutcome | None] = [None] * len(items)
    jobs: list[tuple[int, DestroyJob]] = []
    for index, item in enumerate(items):
        try:
            jobs.append((index, parse_destroy_item(item)))
        except ValueError as e:
            log.warning("agent %s: item %r refused: %s", agent_id, item, e)
            outcomes[index] = ItemOutcome(
                _item_id(item), str(agent_id), ok=False, error=describe_error(e)
            )
    results = await destroy_jobs(pool, agent_id, [job for _, job in jobs], concurrency)
    for (index, job), (result, duration) in zip(jobs, results, strict=True):
        outcomes[index] = to_outcome(result, job.session_id, duration, job.attempt)
    return [o for o in outcomes if o is not None]


async def destroy_jobs(
    pool: AgentClientPool, agent_id: AgentId, jobs: Sequence[DestroyJob], concurrency: int
) -> list[tuple[KernelTerminationResult, float]]:
    """Runs the jobs on one leased client; a failed lease fails every job of the agent."""
    if not jobs:
        return []
    gate = asyncio.Semaphore(max(1, concurrency))

    async def timed(client: AgentClient, job: DestroyJob) -> tuple[KernelTerminationResult, float]:
        async with gate:
            started = time.monotonic()
            result = await destroy_with_client(client, agent_id, job)
            return result, time.monotonic() - started

    results: list[tuple[KernelTerminationResult, float]] | None = None
    try:
        async with pool.acquire(agent_id) as client:
            results = list(await asyncio.gather(*(timed(client, job) for job in jobs)))
    except Exception as e:
        if results is not None:
            # The calls were made; only handing the client back failed.
            log.warning("agent %s: releasing the client failed: %s", agent_id, e)
            return results
        for job in jobs:
            log.warning(
                "kernel %s not destroyed: agent %s unreachable: %s", job.kernel_id, agent_id, e
            )
        return [(_failed(job, agent_id, describe_error(e)), 0.0) for job in jobs]
    return results


def to_outcome(
    result: KernelTerminationResult,
    session_id: SessionId,
    duration: float = 0.0,
    attempt: int = 1,
) -> ItemOutcome:
    """The JSON-safe fan-out outcome of one kernel's termination."""
    detail: JSON = {
        "session_id": str(session_id),
        "occupied_slots": result.occupied_slots.to_json(),
    }
    if attempt > 1:
        detail["attempt"] = attempt
    return ItemOutcome(
        item_id=str(result.kernel_id),
        agent_id=str(result.agent_id),
        ok=result.success,
        error=result.error,
        duration=duration,
        detail=detail,
    )


def _failed(job: DestroyJob, agent_id: AgentId, error: str) -> KernelTerminationResult:
    return KernelTerminationResult(job.kernel_id, agent_id, job.occupied_slots, False, error)


def _item_id(item: Mapping[str, Any]) -> str:
    try:
        return str(item.get("kernel_id", ""))
    except AttributeError:
        return ""
