"""Judging stale kernels: presence first, then the kernel's own agent."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sokovan import constants as C
from sokovan.errors import describe_error
from sokovan.ports import AgentClient, AgentClientPool, PresenceReader
from sokovan.scheduler.terminator.identity import is_stranger_error, judge_report
from sokovan.types import (
    JSON,
    AgentId,
    HealthCheckStatus,
    KernelId,
    KernelInfo,
    KernelPresence,
)

log = logging.getLogger(__name__)

# Stage-2 answers as recorded in the evidence; only ANSWER_DEAD lets a kernel be terminated.
ANSWER_DEAD = "False"
ANSWER_RUNNING = "True"
ANSWER_UNSURE = "None"
ANSWER_NO_AGENT = "no agent"
# The answering agent could not be shown to be the kernel's host: never a kill.
ANSWER_IDENTITY = "identity"


# Agents restarted lately: each one's start, epoch seconds on the presence store's clock.
Restarts = Mapping[AgentId, float]


def unverified_kind(answer: str) -> str:
    """The kind of a stage-2 answer that neither kills nor keeps, as a metric label."""
    if answer == ANSWER_IDENTITY:
        return "identity"
    if answer == ANSWER_NO_AGENT:
        return "no_agent"
    if answer.startswith("error:"):
        return "error"  # the agent could not be reached, or its call failed
    return "no_answer"  # None, or an answer of another shape


@dataclass(frozen=True, slots=True)
class KernelEvidence:
    """Why one kernel was suspected and what its agent said."""

    kernel_id: KernelId
    agent_id: AgentId | None
    presence: HealthCheckStatus | None
    last_presence: float | None = None
    answer: str | None = None
    # Why the answering agent's identity is unverified, when it is.
    identity: str | None = None
    # The agent's start, when it restarted after the kernel's last presence: why it is
    # suspected although its presence is not (yet) stale.
    restarted_at: float | None = None

    @property
    def suspected(self) -> str:
        """Why stage 1 picked this kernel."""
        if self.restarted_at is not None:
            return (
                f"agent restarted at {_iso(self.restarted_at)} after the kernel's last"
                f" presence at {_iso(self.last_presence)}"
            )
        if self.presence is None:
            return "presence missing"
        return f"presence stale since {_iso(self.last_presence)}"

    @property
    def dead(self) -> bool:
        return self.answer == ANSWER_DEAD

    @property
    def alive(self) -> bool:
        return self.answer == ANSWER_RUNNING

    def to_json(self) -> JSON:
        out: dict[str, Any] = {
            "agent_id": self.agent_id,
            "presence": "missing" if self.presence is None else self.presence.value,
            "last_presence": self.last_presence,
            "check_running": self.answer,
            "suspected": self.suspected,
        }
        if self.identity is not None:
            out["identity"] = self.identity
        if self.restarted_at is not None:
            out["agent_restarted_at"] = self.restarted_at
        return out


def _iso(epoch: float | None) -> str:
    if epoch is None:
        return "unknown"
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


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
    stamp_agents: bool = True,
    restarts: Restarts | None = None,
) -> StaleJudgement:
    """Stage 1: one batched presence read per page; missing or STALE kernels become candidates,
    and so do kernels of a restarted agent (`restarts`) last present before its start.

    Only the candidates are kept across pages, so the judgement (and the brake on it) covers
    every kernel while one page of presence is held at a time. `stamp_agents` False: the
    kernels are not all of their agents' RUNNING ones (a budget or a scope), so no agent gets
    its last-check stamp; a real agent would take the unread ones for orphans.
    """
    page_size = max(1, page_size)
    candidates: list[KernelEvidence] = []
    pages = 0
    for start in range(0, len(kernels), page_size):
        page = kernels[start : start + page_size]
        agents = [k.agent_id for k in page] if stamp_agents else None
        statuses = await presence.check_kernel_presence_status_batch([k.id for k in page], agents)
        pages += 1
        candidates.extend(_suspects(page, statuses, restarts or {}))
    return StaleJudgement(total=len(kernels), candidates=tuple(candidates), pages=pages)


def _suspects(
    kernels: Sequence[KernelInfo], statuses: Mapping[KernelId, KernelPresence], restarts: Restarts
) -> Iterator[KernelEvidence]:
    """Kernels of one page whose presence is missing, STALE or older than their agent's
    restart, in input order."""
    for kernel in kernels:
        status = statuses.get(kernel.id)
        if status is None:
            yield KernelEvidence(kernel.id, kernel.agent_id, None)
        elif status.presence == HealthCheckStatus.STALE:
            yield KernelEvidence(
                kernel.id,
                kernel.agent_id,
                status.presence,
                status.last_presence,
            )
        elif restarts and kernel.agent_id is not None and kernel.agent_id in restarts:
            started = restarts[kernel.agent_id]
            if not vouched_since(status.last_presence, started):
                yield KernelEvidence(
                    kernel.id,
                    kernel.agent_id,
                    status.presence,
                    status.last_presence,
                    restarted_at=started,
                )


def vouched_since(last_presence: float | None, started: float) -> bool:
    """Whether a presence stamp may be the agent instance's that started at `started`."""
    return last_presence is not None and last_presence >= started - C.AGENT_RESTART_GRACE_SEC


async def confirm_with_agents(
    pool: AgentClientPool,
    judgement: StaleJudgement,
    concurrency: int,
    verify_identity: bool = False,
) -> StaleJudgement:
    """Stage 2: asks each candidate's agent, all agents at once; records every answer.

    An agent id is its node: whichever process serves the id speaks for the node's kernels,
    a restarted one included. With `verify_identity`, each agent first says who it is
    (`health`); one that names another agent id cannot kill. Every call also carries the
    agent id, which an agent refuses when it does not serve it.
    """
    per_agent: dict[AgentId, list[KernelEvidence]] = {}
    answers: dict[KernelId, KernelEvidence] = {}
    for evidence in judgement.candidates:
        if evidence.agent_id is None:
            log.warning("kernel %s looks stale but has no agent; skipped", evidence.kernel_id)
            answers[evidence.kernel_id] = replace(evidence, answer=ANSWER_NO_AGENT)
        else:
            per_agent.setdefault(evidence.agent_id, []).append(evidence)
    asker = _Asker(pool, concurrency, verify_identity)
    replies = await asyncio.gather(
        *(asker.ask(agent_id, items) for agent_id, items in per_agent.items())
    )
    for reply in replies:
        answers.update((e.kernel_id, e) for e in reply)
    confirmed = tuple(answers[e.kernel_id] for e in judgement.candidates)
    dead = sum(1 for e in confirmed if e.dead)
    if dead:
        log.info("%d of %d suspected kernels confirmed dead by their agents", dead, len(confirmed))
    return replace(judgement, candidates=confirmed)


@dataclass(frozen=True, slots=True)
class _Asker:
    """Asks one agent about its candidates, at most `concurrency` calls at a time."""

    pool: AgentClientPool
    concurrency: int
    verify: bool

    async def ask(self, agent_id: AgentId, items: Sequence[KernelEvidence]) -> list[KernelEvidence]:
        gate = asyncio.Semaphore(max(1, self.concurrency))

        async def one(client: AgentClient, evidence: KernelEvidence) -> KernelEvidence:
            async with gate:
                answer, identity = await _check_running(client, agent_id, evidence.kernel_id)
            return replace(evidence, answer=answer, identity=identity)

        done: list[KernelEvidence] | None = None
        try:
            async with self.pool.acquire(agent_id) as client:
                stranger = await self._stranger(client, agent_id) if self.verify else None
                if stranger is not None:
                    return [replace(e, answer=ANSWER_IDENTITY, identity=stranger) for e in items]
                done = list(await asyncio.gather(*(one(client, e) for e in items)))
        except Exception as e:
            if done is None:
                for item in items:
                    log.warning(
                        "kernel %s skipped: agent %s unreachable: %s", item.kernel_id, agent_id, e
                    )
                done = [replace(item, answer=f"error: {describe_error(e)}") for item in items]
            else:
                log.warning("agent %s: releasing the client failed: %s", agent_id, e)
        return done

    async def _stranger(self, client: AgentClient, agent_id: AgentId) -> str | None:
        """Why the agent answering is not `agent_id`; None when it may be.

        A failed `health` raises: an agent that cannot be asked is unreachable (its liveness
        ping fails too), not a stranger.
        """
        report = await client.health()
        verdict = judge_report(agent_id, report if isinstance(report, Mapping) else {})
        if verdict.mismatch is not None:
            log.warning(
                "agent %s: identity unverified, nothing killed: %s", agent_id, verdict.mismatch
            )
        return verdict.mismatch


async def _check_running(
    client: AgentClient, agent_id: AgentId, kernel_id: KernelId
) -> tuple[str, str | None]:
    try:
        running = await client.check_running(kernel_id)
    except Exception as e:
        if is_stranger_error(e):
            log.warning(
                "kernel %s skipped: agent %s is not who answers: %s", kernel_id, agent_id, e
            )
            return ANSWER_IDENTITY, describe_error(e)
        log.warning(
            "kernel %s skipped: check_running on agent %s failed: %s", kernel_id, agent_id, e
        )
        return f"error: {describe_error(e)}", None
    if running is False:
        return ANSWER_DEAD, None
    if running is True:
        return ANSWER_RUNNING, None
    if running is None:
        log.warning("kernel %s skipped: agent %s cannot tell whether it runs", kernel_id, agent_id)
        return ANSWER_UNSURE, None
    log.warning("kernel %s skipped: agent %s answered %r", kernel_id, agent_id, running)
    return f"unexpected: {running!r}", None
