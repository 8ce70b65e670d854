"""SessionTerminator: destroys kernels of terminating sessions and finds dead ones."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sokovan import constants as C
from sokovan.ports import AgentClientPool, FanOut, PresenceReader
from sokovan.scheduler.terminator.destroy import (
    destroy_kernels_on_agent,
    plan_destroy,
)
from sokovan.scheduler.terminator.stale import (
    Restarts,
    StaleJudgement,
    confirm_with_agents,
    read_presence,
)
from sokovan.types import (
    AgentId,
    ItemOutcome,
    KernelInfo,
    Operation,
    RunId,
    SessionInfo,
)

log = logging.getLogger(__name__)

# Runs started outside the ledger (tests, ad-hoc calls) use this id.
NO_RUN = RunId(0)


class SessionTerminator:
    """Sends destroy requests for terminating sessions and judges stale kernels."""

    def __init__(
        self,
        agent_client_pool: AgentClientPool,
        presence: PresenceReader,
        fanout: FanOut,
        *,
        destroy_concurrency: int = C.DESTROY_CONCURRENCY_PER_AGENT,
        check_running_concurrency: int = C.CHECK_RUNNING_CONCURRENCY_PER_AGENT,
        presence_page_size: int = C.PRESENCE_PAGE_SIZE,
        verify_identity: bool = False,
    ) -> None:
        self._agent_client_pool = agent_client_pool
        self._presence = presence
        self._fanout = fanout
        self._destroy_concurrency = destroy_concurrency
        self._check_running_concurrency = check_running_concurrency
        self._presence_page_size = presence_page_size
        self._verify_identity = verify_identity

    async def terminate_sessions_for_handler(
        self,
        sessions: Sequence[SessionInfo],
        *,
        run_id: RunId = NO_RUN,
        reason: str = "USER_REQUESTED",
    ) -> None:
        """Dispatches one destroy job per kernel with an agent, grouped per agent."""
        if not sessions:
            log.debug("no sessions to terminate")
            return
        plan = plan_destroy(sessions, reason)
        if plan.skipped:
            log.info("run %s: %d kernels without an agent skipped", run_id, len(plan.skipped))
        if not plan.batches and not plan.skipped:
            log.debug("run %s: the sessions have no kernels", run_id)
            return
        log.info(
            "run %s: destroying %d kernels of %d sessions on %d agents",
            run_id,
            plan.planned,
            len(sessions),
            len(plan.batches),
        )
        # Skipped kernels still go to the fan-out so the run's completion counts them.
        await self._fanout.dispatch(run_id, Operation.DESTROY_KERNELS, plan.batches, plan.skipped)

    async def destroy_batch(
        self, agent_id: AgentId, items: Sequence[Mapping[str, Any]]
    ) -> list[ItemOutcome]:
        """Runs one agent's destroy batch with this terminator's pool and bound."""
        return await destroy_kernels_on_agent(
            self._agent_client_pool, agent_id, items, self._destroy_concurrency
        )

    @property
    def presence(self) -> PresenceReader:
        """The presence reader of stage 1 (the sweep's loading pre-reads with it)."""
        return self._presence

    async def read_presence(
        self,
        kernels: Sequence[KernelInfo],
        *,
        stamp_agents: bool = True,
        restarts: Restarts | None = None,
    ) -> StaleJudgement:
        """Stage 1 of the sweep, a page at a time; raises PresenceUnavailable when unreadable.

        `restarts`: agents restarted lately, with their start; their kernels last present
        before it are suspects too.
        """
        return await read_presence(
            self._presence,
            kernels,
            self._presence_page_size,
            stamp_agents=stamp_agents,
            restarts=restarts,
        )

    async def confirm_with_agents(self, judgement: StaleJudgement) -> StaleJudgement:
        """Stage 2 of the sweep: each candidate's agent says whether it runs."""
        return await confirm_with_agents(
            self._agent_client_pool,
            judgement,
            self._check_running_concurrency,
            self._verify_identity,
        )
