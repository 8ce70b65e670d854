"""One stale-kernel sweep over many RUNNING kernels: ours beside a sequential stage 2.

The kernels are spread over the agents with fresh presence, except a share of them
whose presence is STALE; half of those still run on their agent, half are gone.
Ours: `sokovan.handler.run sweep_stale_kernels` on a real worker, timed from the request
to its answer (claim, load, stage 1, stage 2, marking, ledger: the run is closed by then).
Baseline, same run and data: the same handler run in this process, with stage 2 asking
one kernel at a time (the original algorithm).
A quarter of the fresh kernels have a last_check older than the refresh (240 s), as a sweep
every 60 s finds them: those are stamped again, the rest only read.
Each agent takes `--check-latency-ms` (default 5 ms, as the terminate benchmark's destroy
latency) to answer `check_running`, so stage 2's concurrency shows; 0 answers at once.

    python -m bench.sweep [--kernels 100000] [--agents 100] [--stale 0.005] [--check-latency-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from bench.harness import (
    IMAGE,
    Figure,
    RssSampler,
    Stack,
    bulk_sessions,
    commandstats,
    count_kernels,
    machine,
    mib,
    print_figures,
    set_statuses,
    stack,
    stats_delta,
    tasks_sent,
)
from sokovan import constants as C
from sokovan.bootstrap import Services, build_services
from sokovan.config import Settings, presence_url_for
from sokovan.errors import NotFound
from sokovan.ports import AgentClientPool
from sokovan.presence import ValkeyPresence, presence_key
from sokovan.scheduler.handlers import sweep_stale_kernels
from sokovan.scheduler.terminator import SessionTerminator, StaleJudgement
from sokovan.scheduler.terminator.stale import ANSWER_DEAD, ANSWER_NO_AGENT, ANSWER_RUNNING
from sokovan.stubs.fanout import RefusingFanOut
from sokovan.types import (
    AgentId,
    ImageConfig,
    KernelId,
    KernelStatus,
    RunId,
    RunTrigger,
    SessionId,
    SessionStatus,
)

HANDLER = "sweep_stale_kernels"
# Seeding a million kernels takes minutes: longer than the product's presence TTL.
SEED_PRESENCE_TTL = 6 * 3600
# No agent refreshes the seeded presence, so "fresh" must last the whole run: the STALE
# threshold is stretched from 120 s to an hour, and the stale ones are written older still.
SEED_STALE_AFTER = 3600
# A sweep every 60 s stamps a kernel's last_check once in four (the refresh is 240 s), so a
# quarter of the fresh kernels are seeded with one that is due, as each sweep finds them.
STAMPS_DUE_EVERY = 4


class SequentialStage2(SessionTerminator):
    """Stage 2 as first written: one check_running call at a time, in input order."""

    def __init__(self, pool: AgentClientPool, presence: ValkeyPresence) -> None:
        super().__init__(pool, presence, RefusingFanOut("the sweep dispatches nothing"))
        self._pool = pool

    async def confirm_with_agents(self, judgement: StaleJudgement) -> StaleJudgement:
        confirmed = []
        for evidence in judgement.candidates:
            answer = ANSWER_NO_AGENT
            if evidence.agent_id is not None:
                answer = await self._ask(evidence.agent_id, evidence.kernel_id)
            confirmed.append(dataclasses.replace(evidence, answer=answer))
        return dataclasses.replace(judgement, candidates=tuple(confirmed))

    async def _ask(self, agent_id: AgentId, kernel_id: KernelId) -> str:
        try:
            async with self._pool.acquire(agent_id) as client:
                running = await client.check_running(kernel_id)
        except Exception as e:
            return f"error: {e}"
        if running is None:
            return str(running)
        return ANSWER_RUNNING if running else ANSWER_DEAD


async def age_last_checks(st: Stack, fresh: Sequence[str]) -> None:
    """A quarter of the fresh kernels get a last_check older than the refresh, so the next
    sweep finds what a sweep every 60 s finds; done before each side's timed run."""
    due = fresh[::STAMPS_DUE_EVERY]
    redis: Redis = Redis.from_url(presence_url_for(st.redis_url, C.PRESENCE_DB))
    try:
        seconds, _ = await redis.time()
        when = str(int(seconds - 2 * Settings().presence_check_refresh))
        for start in range(0, len(due), 5000):
            async with redis.pipeline(transaction=False) as pipe:
                for kernel_id in due[start : start + 5000]:
                    pipe.hset(presence_key(kernel_id), "last_check", when)
                await pipe.execute()
    finally:
        await redis.aclose()


class _NoKick:
    async def kick(self, handler: str, trigger: RunTrigger, scope: Sequence[str] | None) -> None:
        return None


async def seed(st: Stack, kernels: int, stale: float) -> tuple[list[str], list[str], list[str]]:
    """RUNNING kernels with presence; returns ids (stale but alive, stale and dead, fresh)."""
    made = bulk_sessions(
        st.senv.engine, st.agent_ids, kernels, SessionStatus.RUNNING, KernelStatus.RUNNING
    )
    step = max(1, round(1 / stale)) if stale > 0 else kernels + 1
    suspects = made[::step]
    alive, dead = suspects[::2], suspects[1::2]
    pool_services = st.extras["services"]
    pool: AgentClientPool = pool_services.pool
    image = ImageConfig(canonical=IMAGE)
    config = {"image": {"canonical": IMAGE}, "environ": {}}
    for sid, kid, agent in alive:
        async with pool.acquire(agent) as client:
            await client.create_kernels(
                SessionId(sid), [KernelId(kid)], [config], {}, {KernelId(kid): image}
            )
    redis: Redis = Redis.from_url(presence_url_for(st.redis_url, C.PRESENCE_DB))
    try:
        # Agents refresh presence; this seed writes it once, so it must outlive the whole run.
        presence = ValkeyPresence(redis, ttl=SEED_PRESENCE_TTL)
        seconds, _ = await redis.time()
        now = float(seconds)
        fresh = {str(k) for _, k, _ in made} - {str(k) for _, k, _ in suspects}
        ids = sorted(fresh)
        for start in range(0, len(ids), 5000):
            await presence.write_presence(ids[start : start + 5000], now=now)
        # Last seen well past the (stretched) threshold after which presence is STALE.
        await presence.write_presence(
            [str(k) for _, k, _ in suspects], now=now - 2 * SEED_STALE_AFTER
        )
    finally:
        await redis.aclose()
    return [str(k) for _, k, _ in alive], [str(k) for _, k, _ in dead], ids


async def ours(st: Stack, scope: list[str] | None, limit: float) -> dict[str, Any]:
    """One sweep run on the worker, timed from the request to its answer."""
    assert st.worker is not None
    before = commandstats(st.redis_url)
    with RssSampler(st.worker.proc.pid) as rss:
        began = time.monotonic()
        kwargs = {"handler": HANDLER, "trigger": "api", "scope": scope}
        answer = await asyncio.to_thread(
            st.app.send_task("sokovan.handler.run", kwargs=kwargs).get, timeout=limit
        )
        ended = time.monotonic()
    after = commandstats(st.redis_url)
    delta = stats_delta(before, after)
    return {
        "unverified": _skipped(st, answer.get("run_id")),
        "status": str(answer.get("status") or answer.get("error")),
        "seconds": ended - began,
        "rss": rss.peak,
        "rss_process": rss.peak_process,
        "fds": rss.peak_fds,
        "fds_process": rss.peak_fds_process,
        "resources": rss.note(),
        "tasks": tasks_sent(before, after),
        # Each stage-1 presence read asks for TIME once; the agents send none here.
        "reads": delta.get("time", 0),
        "hmget": delta.get("hmget", 0),
        "hgetall": delta.get("hgetall", 0),
    }


def _skipped(st: Stack, run_id: Any) -> int:
    """The run's skipped kernels; -1 (a figure, not an abort) when its record cannot be read."""
    if not run_id:
        return -1
    try:
        return st.ledger.get_run(RunId(int(run_id))).skipped
    except NotFound:
        return -1


async def baseline(services: Services, scope: list[str] | None) -> dict[str, Any]:
    """The same run in this process, with the sequential stage 2 registered."""
    assert isinstance(services.presence, ValkeyPresence)
    trips = services.presence.round_trips
    began = time.monotonic()
    report = await services.coordinator.run(HANDLER, RunTrigger.API, scope)
    ended = time.monotonic()
    unverified = (
        -1 if report.run_id is None else services.ledger.sync.get_run(report.run_id).skipped
    )
    return {
        "unverified": unverified,
        "status": str(report.status),
        "seconds": ended - began,
        "round_trips": services.presence.round_trips - trips,
    }


async def _baseline_services(st: Stack) -> Services:
    settings = st.senv.settings
    services = await build_services(
        settings, RefusingFanOut("the sweep dispatches nothing"), _NoKick()
    )
    assert isinstance(services.presence, ValkeyPresence)
    sequential = SequentialStage2(services.pool, services.presence)
    context = dataclasses.replace(services.context, terminator=sequential)
    services.coordinator.register(sweep_stale_kernels.build(context))
    return services


async def run(args: argparse.Namespace) -> list[Figure]:
    """Seeds the kernels, warms both sides up on the suspects, then times one full run each."""
    latency = {"check_running": args.check_latency_ms / 1000}
    async with stack(
        agents=args.agents,
        latency=latency,
        worker_concurrency=args.concurrency,
        settings={"presence_stale_after": str(SEED_STALE_AFTER)},
    ) as st:
        services = await _baseline_services(st)
        st.extras["services"] = services
        try:
            alive, dead, fresh = await seed(st, args.kernels, args.stale)
            # Warm-up on the suspects that still run (with fresh kernels so the brake holds
            # off): both sides connect to their agents and change nothing.
            warm = alive + fresh[: 3 * len(alive)]
            await ours(st, warm, args.timeout)
            await baseline(services, warm)
            await age_last_checks(st, fresh)
            base = await baseline(services, None)
            reaped = args.kernels - count_kernels(st.senv.engine, KernelStatus.RUNNING)
            set_statuses(st.senv.engine, SessionStatus.RUNNING, KernelStatus.RUNNING)
            await age_last_checks(st, fresh)
            mine = await ours(st, None, args.timeout)
            mine_reaped = args.kernels - count_kernels(st.senv.engine, KernelStatus.RUNNING)
        finally:
            await services.close()
    outcome = (
        f"runs {mine['status']} (ours) and {base['status']} (baseline); "
        f"{mine_reaped} reaped by ours, {reaped} by the baseline; suspects left unverified "
        f"(agent errors, timeouts, no answer): ours {mine['unverified']}, "
        f"baseline {base['unverified']}"
    )
    if reaped != len(dead) or mine_reaped != len(dead):
        outcome += f" (expected {len(dead)}: ours missed {len(dead) - mine_reaped})"
    label = (
        f"sweep {args.kernels:,} kernels / {args.agents} agents, {len(alive) + len(dead)} stale,"
        f" check_running {args.check_latency_ms:g} ms"
    )
    return [
        Figure(
            label,
            mine["seconds"],
            base["seconds"],
            "s",
            note=(
                f"agents answer check_running after {args.check_latency_ms:g} ms; "
                f"{outcome}; stage 1: {base['round_trips']:.0f} round trip(s) in the "
                f"baseline, {mine['reads']:.0f} in ours ({mine['hmget']:.0f} HMGET, "
                f"{mine['hgetall']:.0f} HGETALL); {mine['tasks']} Celery task(s) sent; "
                f"{mine['resources']}"
            ),
        ),
        Figure("sweep: Celery tasks sent", mine["tasks"], float("nan"), "tasks"),
        Figure("sweep: worker peak RSS, tree", mib(mine["rss"]), float("nan"), "MiB"),
        Figure(
            "sweep: worker peak RSS, largest process", mib(mine["rss_process"]), float("nan"), "MiB"
        ),
        Figure("sweep: worker peak open fds, tree", mine["fds"], float("nan"), "fds"),
        Figure(
            "sweep: worker peak open fds, largest process",
            mine["fds_process"],
            float("nan"),
            "fds",
        ),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", type=int, default=100_000)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--stale", type=float, default=0.005, help="share of kernels stale")
    parser.add_argument(
        "--check-latency-ms", type=float, default=5.0, help="check_running delay on every agent"
    )
    parser.add_argument(
        "--concurrency", type=int, default=C.WORKER_CONCURRENCY, help="worker processes"
    )
    parser.add_argument("--timeout", type=float, default=600.0)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    figures = asyncio.run(run(args))
    print_figures(f"bench.sweep on {machine()}", figures)


if __name__ == "__main__":
    main()
