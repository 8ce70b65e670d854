"""Judging stale kernels: presence first, then the kernel's own agent."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

from sokovan import constants as C
from sokovan.errors import describe_error
from sokovan.ports import AgentClient, AgentClientPool, PresenceReader
from sokovan.types import JSON, AgentId, HealthCheckStatus, KernelId, KernelInfo, KernelPresence

log = logging.getLogger(__name__)

# Stage-2 answers as recorded in the evidence; only ANSWER_DEAD lets a kernel be terminated.
ANSWER_DEAD = "False"
ANSWER_RUNNING = "True"
ANSWER_UNSURE = "None"
ANSWER_NO_AGENT = "no agent"


@dataclass(frozen=True, slots=True)
class KernelEvidence:
    """Why one kernel was suspected and what its agent said."""

    kernel_id: KernelId
    agent_id: AgentId | None
    presence: HealthCheckStatus | None
    last_presence: float | None = None
    answer: str | None = None

    @property
    def dead(self) -> bool:
        return self.answer == ANSWER_DEAD

    @property
    def alive(self) -> bool:
        return self.answer == ANSWER_RUNNING

    def to_json(self) -> JSON:
        return {
            "agent_id": self.agent_id,
            "presence": "missing" if self.presence is None else self.presence.value,
            "last_presence": self.last_presence,
            "check_running": self.answer,
        }


@dataclass(frozen=True, slots=True)
class StaleJudgement:
    """Stage-1 candidates of a sweep, in input order, with their stage-2 answers."""

    total: int
    candidates: tuple[KernelEvidence, ...] = ()
    # Presence reads (round trips) stage 1 took.
    pages: int = 0

    @property
    def dead_kernel_ids(self) -> list[KernelId]:
        return [e.kernel_id for e in self.candidates if e.dead]

    @property
    def undecided(self) -> list[KernelEvidence]:
        """Candidates whose agent gave no clear answer (error, None, no agent, not asked)."""
        return [e for e in self.candidates if not e.dead and not e.alive]

    @property
    def stale_ratio(self) -> float:
        return len(self.candidates) / self.total if self.total else 0.0

    def evidence(self) -> dict[str, JSON]:
        """Per-candidate evidence keyed by kernel id string."""
        return {str(e.kernel_id): e.to_json() for e in self.candidates}


async def read_presence(
    presence: PresenceReader,
    kernels: Sequence[KernelInfo],
    page_size: int = C.PRESENCE_PAGE_SIZE,
) -> StaleJudgement:
    """Stage 1: one batched presence read per page; missing or STALE kernels become candidates.

    Only the candidates are kept across pages, so the judgement (and the brake on it) covers
    every kernel while one page of presence is held at a time.
    """
    page_size = max(1, page_size)
    candidates: list[KernelEvidence] = []
    pages = 0
    for start in range(0, len(kernels), page_size):
        page = kernels[start : start + page_size]
        statuses = await presence.check_kernel_presence_status_batch(
            [k.id for k in page], [k.agent_id for k in page]
        )
        pages += 1
        candidates.extend(_suspects(page, statuses))
    return StaleJudgement(total=len(kernels), candidates=tuple(candidates), pages=pages)


def _suspects(
    kernels: Sequence[KernelInfo], statuses: Mapping[KernelId, KernelPresence]
) -> Iterator[KernelEvidence]:
    """Kernels of one page whose presence is missing or STALE, in input order."""
    for kernel in kernels:
        status = statuses.get(kernel.id)
        if status is None:
            yield KernelEvidence(kernel.id, kernel.agent_id, None)
        elif status.presence == HealthCheckStatus.STALE:
            yield KernelEvidence(kernel.id, kernel.agent_id, status.presence, status.last_presence)


async def confirm_with_agents(
    pool: AgentClientPool, judgement: StaleJudgement, concurrency: int
) -> StaleJudgement:
    """Stage 2: asks each candidate's agent, all agents at once; records every answer."""
    per_agent: dict[AgentId, list[KernelId]] = {}
    answers: dict[KernelId, str] = {}
    for evidence in judgement.candidates:
        if evidence.agent_id is None:
            log.warning("kernel %s looks stale but has no agent; skipped", evidence.kernel_id)
            answers[evidence.kernel_id] = ANSWER_NO_AGENT
        else:
            per_agent.setdefault(evidence.agent_id, []).append(evidence.kernel_id)
    replies = await asyncio.gather(
        *(_ask_agent(pool, agent_id, ids, concurrency) for agent_id, ids in per_agent.items())
    )
    for reply in replies:
        answers.update(reply)
    confirmed = tuple(replace(e, answer=answers[e.kernel_id]) for e in judgement.candidates)
    dead = sum(1 for e in confirmed if e.dead)
    if dead:
        log.info("%d of %d suspected kernels confirmed dead by their agents", dead, len(confirmed))
    return replace(judgement, candidates=confirmed)


async def _ask_agent(
    pool: AgentClientPool, agent_id: AgentId, kernel_ids: Sequence[KernelId], concurrency: int
) -> dict[KernelId, str]:
    """Asks one agent about its kernels in order, at most `concurrency` at a time."""
    gate = asyncio.Semaphore(max(1, concurrency))

    async def ask(client: AgentClient, kernel_id: KernelId) -> str:
        async with gate:
            return await _check_running(client, agent_id, kernel_id)

    answers: list[str] | None = None
    try:
        async with pool.acquire(agent_id) as client:
            answers = list(await asyncio.gather(*(ask(client, k) for k in kernel_ids)))
    except Exception as e:
        if answers is None:
            for kernel_id in kernel_ids:
                log.warning("kernel %s skipped: agent %s unreachable: %s", kernel_id, agent_id, e)
            answers = [f"error: {describe_error(e)}"] * len(kernel_ids)
        else:
            log.warning("agent %s: releasing the client failed: %s", agent_id, e)
    return dict(zip(kernel_ids, answers, strict=True))


async def _check_running(client: AgentClient, agent_id: AgentId, kernel_id: KernelId) -> str:
    try:
        running = await client.check_running(kernel_id)
    except Exception as e:
        log.warning(
            "kernel %s skipped: check_running on agent %s failed: %s", kernel_id, agent_id, e
        )
        return f"error: {describe_error(e)}"
    if running is False:
        return ANSWER_DEAD
    if running is True:
        return ANSWER_RUNNING
    if running is None:
        log.warning("kernel %s skipped: agent %s cannot tell whether it runs", kernel_id, agent_id)
        return ANSWER_UNSURE
    log.warning("kernel %s skipped: agent %s answered %r", kernel_id, agent_id, running)
    return f"unexpected: {running!r}"
