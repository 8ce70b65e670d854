"""Terminating K kernels over N agents: the Celery fan-out beside one in-process gather.

Ours: `sokovan.handler.run terminate_sessions` on a real worker (one destroy task per
agent, a chord body that marks the kernels), timed from the request until the run is
closed and every kernel is TERMINATED in the database. Baseline, same agents and the same
agent client: one `destroy_kernel` call per kernel in a single asyncio.gather, then the
same bulk status moves (the design before Celery).

    python -m bench.terminate [--kernels 10000] [--agents 100] [--latency-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
from collections.abc import Sequence

from bench.harness import (
    Figure,
    RssSampler,
    Stack,
    bulk_sessions,
    commandstats,
    count_kernels,
    lost_note,
    machine,
    mib,
    print_figures,
    set_statuses,
    stack,
    stats_delta,
    timeout_split,
    wait_until,
)
from sokovan.bootstrap import build_agent_pool
from sokovan.config import Settings
from sokovan.constants import AGENT_CALL_TIMEOUT_SEC, WORKER_CONCURRENCY
from sokovan.db.offload import OffloadedStore
from sokovan.db.schema import kernels, sessions
from sokovan.ports import AgentClientPool
from sokovan.scheduler.terminator.destroy import DestroyJob, destroy_with_client
from sokovan.scheduler.transitions import NON_TERMINAL_KERNEL, finish_terminated_sessions
from sokovan.types import (
    AgentId,
    KernelStatus,
    KernelTerminationResult,
    RunId,
    SessionStatus,
)

HANDLER = "terminate_sessions"


async def ours(st: Stack, kernels_total: int, limit: float) -> dict[str, float]:
    """One terminate run on the worker; seconds, tasks sent, kernels lost and peak RSS."""
    assert st.worker is not None
    before = commandstats(st.redis_url)
    with RssSampler(st.worker.proc.pid) as rss:
        began = time.monotonic()
        result = st.app.send_task(
            "sokovan.handler.run", kwargs={"handler": HANDLER, "trigger": "api"}
        )
        answer = await asyncio.to_thread(result.get, timeout=limit)
        if "run_id" not in answer or answer.get("run_id") is None:
            raise RuntimeError(f"the terminate run did not start: {answer}")
        run_id = RunId(int(answer["run_id"]))

        def done() -> bool:
            return st.ledger.get_run(run_id).finished_at is not None

        ended = await wait_until(done, limit, what="the terminate run to close")
    delta = stats_delta(before, commandstats(st.redis_url))
    run = st.ledger.get_run(run_id)
    terminated = count_kernels(st.senv.engine, KernelStatus.TERMINATED)
    errors = [o.error or "" for o in st.ledger.outcomes(run_id) if not o.ok]
    timeouts, other = timeout_split(errors)
    # Each task message is one LPUSH onto the broker queue.
    return {
        "seconds": ended - began,
        "tasks": delta.get("lpush", 0),
        "rss": rss.peak,
        "rss_process": rss.peak_process,
        "fds": rss.peak_fds,
        "fds_process": rss.peak_fds_process,
        "lost": kernels_total - min(kernels_total, terminated, run.succeeded),
        "timeouts": timeouts,
        "other": other,
    }


async def _destroy_one(
    pool: AgentClientPool, agent_id: AgentId, job: DestroyJob
) -> KernelTerminationResult:
    try:
        async with pool.acquire(agent_id) as client:
            return await destroy_with_client(client, agent_id, job)
    except Exception as e:
        return KernelTerminationResult(job.kernel_id, agent_id, job.occupied_slots, False, str(e))


async def baseline(st: Stack, pool: AgentClientPool, kernels_total: int) -> dict[str, float]:
    """One destroy_kernel call per kernel in one gather, then the same status moves."""
    repo = st.repo
    began = time.monotonic()
    found = await asyncio.to_thread(repo.sessions_in, [SessionStatus.TERMINATING])
    calls = [
        _destroy_one(
            pool,
            k.agent_id,
            DestroyJob(k.id, s.id, s.status_info or "USER_REQUESTED", k.occupied_slots),
        )
        for s in found
        for k in s.kernels
        if k.agent_id is not None
    ]
    results = await asyncio.gather(*calls)
    gathered = time.monotonic()
    destroyed = [r.kernel_id for r in results if r.success]
    await asyncio.to_thread(
        repo.transition_kernels, destroyed, KernelStatus.TERMINATED, NON_TERMINAL_KERNEL
    )
    await finish_terminated_sessions(OffloadedStore(repo), [s.id for s in found])
    ended = time.monotonic()
    timeouts, other = timeout_split([str(r.error) for r in results if not r.success])
    return {
        "seconds": ended - began,
        "gather": gathered - began,
        "lost": kernels_total - len(destroyed),
        "timeouts": timeouts,
        "other": other,
    }


async def connect_all(pool: AgentClientPool, ids: Sequence[AgentId], at_once: int = 100) -> int:
    """Connects every agent's client, `at_once` handshakes at a time, each tried thrice;
    returns how many stayed unconnected."""
    gate = asyncio.Semaphore(at_once)

    async def one(agent_id: AgentId) -> bool:
        async with gate:
            for _ in range(3):
                try:
                    async with pool.acquire(agent_id):
                        return True
                except Exception:
                    await asyncio.sleep(0.5)
            return False

    connected = await asyncio.gather(*(one(a) for a in ids))
    return sum(1 for ok in connected if not ok)


def _clear(st: Stack) -> None:
    with st.senv.engine.begin() as conn:
        conn.execute(kernels.delete())
        conn.execute(sessions.delete())


async def run(args: argparse.Namespace) -> list[Figure]:
    """Both designs on the same agents; the figures of the timed round."""
    latency = {"destroy_kernel": args.latency_ms / 1000}
    async with stack(
        agents=args.agents,
        latency=latency,
        worker_concurrency=args.concurrency,
        settings={
            "agent_call_timeout": str(args.call_timeout),
            "fanout_tasks": str(args.fanout_tasks),
            "fanout_agents_per_task": str(args.fanout_agents_per_task),
        },
    ) as st:
        # The design before Celery: one manager process holding a client per agent.
        # A connection refused in the warm-up's crowd of handshakes must not mark its agent
        # unavailable for the timed round: the gather is measured with every client connected.
        one_per_agent = dataclasses.replace(
            st.senv.settings,
            agent_pool_size=max(args.agents, st.senv.settings.agent_pool_size),
            agent_failure_threshold=1_000_000,
        )
        pool = build_agent_pool(one_per_agent, OffloadedStore(st.repo))
        try:
            # Warm-up: one kernel per agent, so both sides start with connected clients.
            ids = st.agent_ids
            for side in ("ours", "baseline"):
                bulk_sessions(
                    st.senv.engine,
                    ids,
                    len(ids),
                    SessionStatus.TERMINATING,
                    KernelStatus.TERMINATING,
                )
                if side == "ours":
                    await ours(st, len(ids), args.timeout)
                else:
                    await connect_all(pool, ids)
                    await baseline(st, pool, len(ids))
                _clear(st)
            bulk_sessions(
                st.senv.engine,
                ids,
                args.kernels,
                SessionStatus.TERMINATING,
                KernelStatus.TERMINATING,
            )
            mine = await ours(st, args.kernels, args.timeout)
            set_statuses(st.senv.engine, SessionStatus.TERMINATING, KernelStatus.TERMINATING)
            base = await baseline(st, pool, args.kernels)
        finally:
            await pool.close_all()
    label = (
        f"terminate {args.kernels:,} kernels / {args.agents} agents, {args.latency_ms:g} ms, "
        f"fan-out <= {args.fanout_tasks} tasks of <= {args.fanout_agents_per_task} agents"
    )
    return [
        Figure(
            label,
            mine["seconds"],
            base["seconds"],
            "s",
            note=(
                f"{_losses('ours', mine, args)}; {_losses('baseline', base, args)}; "
                f"tasks sent {mine['tasks']:.0f}; worker peak RSS {mib(mine['rss']):.0f} MiB "
                f"tree, {mib(mine['rss_process']):.0f} MiB largest process; peak open fds "
                f"{mine['fds']:.0f} tree, {mine['fds_process']:.0f} largest process; "
                f"baseline gather alone {base['gather']:.2f} s"
            ),
        ),
        Figure(
            f"terminate: worker peak RSS ({args.concurrency} procs)",
            mib(mine["rss"]),
            float("nan"),
            "MiB",
        ),
        Figure(
            f"terminate: worker peak open fds ({args.concurrency} procs)",
            mine["fds"],
            float("nan"),
            "fds",
        ),
    ]


def _losses(side: str, got: dict[str, float], args: argparse.Namespace) -> str:
    why = f"to the {args.call_timeout:g} s timeout" if got["timeouts"] else ""
    if got["other"]:
        why = f"({got['timeouts']:.0f} to the {args.call_timeout:g} s timeout, "
        why += f"{got['other']:.0f} to other errors)"
    return lost_note(side, int(got["lost"]), args.kernels, "destroy calls", why)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", type=int, default=10_000)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--latency-ms", type=float, default=5.0, help="destroy_kernel delay")
    parser.add_argument(
        "--concurrency", type=int, default=WORKER_CONCURRENCY, help="worker processes"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="bound of one side's run")
    parser.add_argument(
        "--fanout-tasks", type=int, default=Settings().fanout_tasks, help="tasks a fan-out"
    )
    parser.add_argument(
        "--fanout-agents-per-task",
        type=int,
        default=Settings().fanout_agents_per_task,
        help="agents a task at most",
    )
    parser.add_argument(
        "--call-timeout",
        type=float,
        default=AGENT_CALL_TIMEOUT_SEC,
        help="seconds per agent call on both sides (the product's default)",
    )
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    figures = asyncio.run(run(args))
    print_figures(f"bench.terminate on {machine()}", figures)


if __name__ == "__main__":
    main()
