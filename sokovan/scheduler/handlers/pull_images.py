"""pull_images: SCHEDULED -> PULLING -> PREPARED, one check_and_pull task per agent."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sokovan import constants as C
from sokovan.scheduler.handlers.base import (
    FollowUps,
    HandlerContext,
    HandlerDeclaration,
    HandlerRuntime,
    Moved,
    Plan,
    Transition,
)
from sokovan.scheduler.launcher.agent_jobs import pull_images_on_agent
from sokovan.scheduler.transitions import (
    FAILED_TO_START,
    fail_sessions,
    move_sessions,
    parse_ids,
    promote_sessions,
    session_ids_of,
)
from sokovan.types import (
    AgentId,
    ItemOutcome,
    KernelStatus,
    Operation,
    RunId,
    SessionId,
    SessionStatus,
)

NAME = "pull_images"
START_SESSIONS = "start_sessions"


async def pull_on_agent(
    ctx: HandlerContext, agent_id: AgentId, items: Sequence[Mapping[str, Any]]
) -> list[ItemOutcome]:
    """check_and_pull once for one agent's images."""
    return await pull_images_on_agent(ctx.pool, agent_id, items)


def build(ctx: HandlerContext) -> HandlerRuntime:
    """Image pulling bound to its adapters."""
    repo = ctx.repository

    async def plan(run_id: RunId, scope: Sequence[str] | None, budget: int) -> Plan:
        only = parse_ids(scope)
        sessions = await asyncio.to_thread(
            repo.sessions_in,
            [SessionStatus.SCHEDULED],
            limit=budget,
            only=None if only is None else [SessionId(u) for u in only],
        )
        sessions = await move_sessions(
            repo, sessions, SessionStatus.PULLING, KernelStatus.PULLING, SessionStatus.SCHEDULED
        )
        if not sessions:
            return Plan(requested=0)
        images = {k.image for s in sessions for k in s.kernels}
        configs = await asyncio.to_thread(repo.image_configs, images)
        await ctx.launcher().trigger_image_pulling(sessions, configs, run_id=run_id)
        return Plan(requested=sum(len(s.kernels) for s in sessions), dispatched=True)

    async def complete(run_id: RunId, outcomes: Sequence[ItemOutcome], moved: Moved) -> FollowUps:
        failed_sessions = session_ids_of(o for o in outcomes if not o.ok)
        # One error per failed session (its kernels share the agent's answer), not per kernel.
        pull_errors = {
            SessionId(uuid.UUID(str(o.detail["session_id"]))): o.error or ""
            for o in outcomes
            if not o.ok
        }
        for sid, message in pull_errors.items():
            info = {"src": "agent", "name": "ImagePullFailed", "message": message}
            await asyncio.to_thread(repo.merge_session_status_data, sid, {"error": info})
        follow: list[tuple[str, Sequence[str] | None]] = []
        follow.extend(await fail_sessions(repo, sorted(failed_sessions), FAILED_TO_START))
        prepared = await promote_sessions(
            repo,
            session_ids_of(outcomes) - failed_sessions,
            KernelStatus.PREPARED,
            SessionStatus.PULLING,
            SessionStatus.PREPARED,
        )
        if prepared:
            follow.append((START_SESSIONS, [str(s) for s in prepared]))
        return follow

    return HandlerRuntime(DECLARATION, plan, {Operation.CHECK_AND_PULL: complete})


DECLARATION = HandlerDeclaration(
    name=NAME,
    lock_id="LOCKID_SOKOVAN_PULL_IMAGES",
    description="pulls the images of SCHEDULED sessions, one task per agent",
    default_interval=C.LAUNCH_INTERVAL_SEC,
    interval_setting="launch_interval",
    target="sessions",
    target_statuses=(SessionStatus.SCHEDULED, SessionStatus.PULLING),
    transitions={"ok": Transition(KernelStatus.PREPARED, (KernelStatus.PULLING,))},
    build=build,
    batches={Operation.CHECK_AND_PULL: pull_on_agent},
    budget_unit="sessions",
)
