"""Many one-kernel sessions submitted at once: submit -> RUNNING through Celery, beside asyncio.

Ours: one `sokovan.sessions.create` carrying every session, then pull (one check_and_pull
per agent) and start (one create_kernels task per agent and run) on a real worker; latency
is each session's RUNNING time in the database minus the moment it was sent. With a warm
keypair pool (filled by the workers before the burst, as after idle time), with a cold one
(emptied just before: every key made on demand), and with a warm pool but one
`sokovan.session.create` per session. Baseline, same agents and client: in this process,
the per-session work of Backend.AI's asyncio launcher: one check_and_pull per agent, then
per session one cluster SSH keypair (RSA-2048, made on the event loop as the original
does) and one create_kernels, all at once in one gather (no database, no broker); and the
same calls without the keypairs.

The cold RSA burst is set beside the key generation floor: the keys it needs times the CPU
one key takes (measured in this run, in this process) over the cores, the least any
launcher that makes a key per session can take. A second stack with
SOKOVAN_KEYPAIR_TYPE=ed25519 runs the cold burst again. Each burst's 1-minute load average
is printed with the figures: the machine may be shared.

    python -m bench.launch [--sessions 1000] [--agents 20] [--latency-ms 10] [--pool-size N]
        [--no-ed25519]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence
from typing import Final

import psutil
import sqlalchemy as sa

from bench.harness import (
    IMAGE,
    Figure,
    RssSampler,
    Stack,
    commandstats,
    count_sessions,
    machine,
    print_figures,
    stack,
    stats_delta,
    timeout_split,
    wait_until,
)
from bench.launch_figures import Bursts, figures
from bench.timeline import cpu_seconds, print_runs
from sokovan.bootstrap import build_agent_pool
from sokovan.constants import AGENT_CALL_TIMEOUT_SEC, WORKER_CONCURRENCY
from sokovan.db.offload import OffloadedStore
from sokovan.db.schema import keypair_pool, sessions
from sokovan.ports import AgentClientPool
from sokovan.scheduler.launcher.keys import generate_cluster_ssh_keypair
from sokovan.types import AgentId, ImageConfig, KernelId, SessionId, SessionStatus
from tasks.names import KEYPAIRS_REFILL, SESSION_CREATE, SESSIONS_CREATE

FAILED = (SessionStatus.TERMINATING, SessionStatus.TERMINATED, SessionStatus.ERROR)
# Keys made in a row to measure one key's CPU: RSA-2048 keys vary a lot (prime search).
KEY_SAMPLE: Final = 40


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _running_at(st: Stack, prefix: str) -> dict[str, float]:
    """RUNNING sessions named `prefix*` and the unix time they became RUNNING."""
    with st.senv.engine.connect() as conn:
        rows = conn.execute(
            sa.select(sessions.c.name, sessions.c.status_changed_at).where(
                sessions.c.name.like(f"{prefix}%"),
                sessions.c.status == str(SessionStatus.RUNNING),
            )
        )
        return {str(name): at.timestamp() for name, at in rows}


def _count(st: Stack, prefix: str, statuses: Sequence[SessionStatus]) -> int:
    with st.senv.engine.connect() as conn:
        query = (
            sa.select(sa.func.count())
            .select_from(sessions)
            .where(
                sessions.c.name.like(f"{prefix}%"),
                sessions.c.status.in_([str(s) for s in statuses]),
            )
        )
        return int(conn.execute(query).scalar() or 0)


def _send(st: Stack, count: int, prefix: str, batch: bool) -> dict[str, float]:
    """Submits the sessions, in one message or one per session; when each was sent."""
    names = [f"{prefix}{i}" for i in range(count)]
    if batch:
        at = time.time()
        requests = [{"image": IMAGE, "name": name} for name in names]
        st.app.send_task(SESSIONS_CREATE, kwargs={"requests": requests})
        return dict.fromkeys(names, at)
    sent: dict[str, float] = {}
    for name in names:
        sent[name] = time.time()
        st.app.send_task(SESSION_CREATE, kwargs={"request": {"image": IMAGE, "name": name}})
    return sent


async def ours(
    st: Stack,
    count: int,
    prefix: str,
    limit: float,
    *,
    batch: bool = True,
    timeline: bool = False,
) -> dict[str, float]:
    """Submits every session at once; waits until all are RUNNING; latencies from the database."""
    assert st.worker is not None
    load = psutil.getloadavg()[0]
    before = commandstats(st.redis_url)
    cpu_before = cpu_seconds(st)
    with RssSampler(st.worker.proc.pid) as rss:
        sent = _send(st, count, prefix, batch)
        sending = time.time() - min(sent.values())

        def settled() -> bool:
            return _count(st, prefix, [SessionStatus.RUNNING, *FAILED]) >= count

        # What did not settle in time is counted as lost below.
        with contextlib.suppress(TimeoutError):
            await wait_until(settled, limit, interval=0.2, what="every session settled")
    delta = stats_delta(before, commandstats(st.redis_url))
    running = _running_at(st, prefix)
    failed = _count(st, prefix, FAILED)
    if timeline:
        print_runs(st, min(sent.values()))
        cpu = {k: v - cpu_before.get(k, 0.0) for k, v in cpu_seconds(st).items()}
        print("  CPU seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
    latencies = [running[name] - sent[name] for name in sent if name in running]
    span = max(running.values(), default=time.time()) - min(sent.values())
    return {
        "rate": len(running) / span if span > 0 else float("nan"),
        "p50": percentile(latencies, 0.50),
        "p99": percentile(latencies, 0.99),
        "lost": count - len(running),
        "failed": failed,
        "sending": sending,
        "tasks": delta.get("lpush", 0),
        "rss": rss.peak,
        "rss_process": rss.peak_process,
        "load": load,
    }


async def baseline(
    pool: AgentClientPool, agents: Sequence[AgentId], count: int, *, keys: bool = True
) -> dict[str, float]:
    """check_and_pull per agent, then keypair + create_kernels per session, one gather each."""
    image = ImageConfig(canonical=IMAGE)
    config = {"image": {"canonical": IMAGE}, "environ": {}, "resource_slots": {"cpu": "1"}}
    load = psutil.getloadavg()[0]
    began = time.monotonic()

    async def pull(agent: AgentId) -> None:
        async with pool.acquire(agent) as client:
            await client.check_and_pull({IMAGE: image})

    async def create(i: int) -> float | str:
        agent, kernel = agents[i % len(agents)], KernelId(uuid.uuid4())
        try:
            # The original makes the keypair synchronously, on the loop, for every session.
            keypair = generate_cluster_ssh_keypair().to_agent() if keys else None
            cluster_info = {"ssh_keypair": keypair} if keypair else {}
            async with pool.acquire(agent) as client:
                await client.create_kernels(
                    SessionId(uuid.uuid4()), [kernel], [config], cluster_info, {kernel: image}
                )
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return time.monotonic() - began

    await asyncio.gather(*(pull(a) for a in agents), return_exceptions=True)
    results = await asyncio.gather(*(create(i) for i in range(count)))
    span = time.monotonic() - began
    latencies = [r for r in results if isinstance(r, float)]
    timeouts, other = timeout_split([r for r in results if isinstance(r, str)])
    return {
        "rate": len(latencies) / span,
        "p50": percentile(latencies, 0.50),
        "p99": percentile(latencies, 0.99),
        "lost": count - len(latencies),
        "timeouts": timeouts,
        "other": other,
        "load": load,
    }


def _pooled(st: Stack) -> int:
    with st.senv.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(keypair_pool)).scalar() or 0)


async def fill_pool(st: Stack, target: int, limit: float) -> float:
    """Asks the workers for refills, as beat would, until the pool holds `target`; seconds."""
    began = time.monotonic()
    while _pooled(st) < target:
        if time.monotonic() - began > limit:
            raise TimeoutError(f"the keypair pool did not reach {target} in {limit:g} s")
        st.app.send_task(KEYPAIRS_REFILL)
        with contextlib.suppress(TimeoutError):
            await wait_until(lambda: _pooled(st) >= target, 5.0, interval=0.2)
    return time.monotonic() - began


def drain_pool(st: Stack) -> None:
    with st.senv.engine.begin() as conn:
        conn.execute(keypair_pool.delete())


def key_cpu(key_type: str, keys: int = KEY_SAMPLE) -> float:
    """CPU seconds one keypair of `key_type` takes here: the mean over `keys` made in a row."""
    generate_cluster_ssh_keypair(key_type)  # the first one loads the backend
    began = time.process_time()
    for _ in range(keys):
        generate_cluster_ssh_keypair(key_type)
    return (time.process_time() - began) / keys


def settings_of(args: argparse.Namespace, target: int, key_type: str) -> dict[str, str]:
    return {
        "agent_call_timeout": str(args.call_timeout),
        "keypair_pool_size": str(target),
        "keypair_type": key_type,
    }


async def run(args: argparse.Namespace) -> list[Figure]:
    """Warm-ups, the baselines, our burst with a warm pool and with a cold one, then a cold
    burst on a stack that makes Ed25519 keys."""
    latency = {"create_kernels": args.latency_ms / 1000}
    target = args.pool_size or args.sessions
    settings = settings_of(args, target, "rsa")
    async with stack(
        agents=args.agents, latency=latency, worker_concurrency=args.concurrency, settings=settings
    ) as st:
        # The baseline's loop is busy making keys, so it reads replies late: with the
        # product's call timeout it loses calls, and the losses are printed.
        pool = build_agent_pool(st.senv.settings, OffloadedStore(st.repo))
        # Its own clients: agents the keypair baseline timed out on are not held against it.
        bare_pool = build_agent_pool(st.senv.settings, OffloadedStore(st.repo))
        try:
            # Warm-up: images land on every agent, clients connect on both sides.
            await ours(st, args.agents, "warm-", args.timeout)
            fill = await fill_pool(st, target, args.timeout)
            await baseline(pool, st.agent_ids, args.agents)
            await baseline(bare_pool, st.agent_ids, args.agents, keys=False)
            base = await baseline(pool, st.agent_ids, args.sessions)
            bare = await baseline(bare_pool, st.agent_ids, args.sessions, keys=False)
            warm = await ours(st, args.sessions, "hot-", args.timeout, timeline=args.runs)
            await fill_pool(st, target, args.timeout)  # idle time after the burst
            each = await ours(st, args.sessions, "each-", args.timeout, batch=False)
            await fill_pool(st, target, args.timeout)
            drain_pool(st)
            cold = await ours(st, args.sessions, "cold-", args.timeout, timeline=args.runs)
        finally:
            await pool.close_all()
            await bare_pool.close_all()
        running = count_sessions(st.senv.engine, SessionStatus.RUNNING)
    keys = {key_type: key_cpu(key_type) for key_type in ("rsa", "ed25519")}
    ed = await ed25519_cold(args, latency) if args.ed25519 else None
    bursts = Bursts(warm, cold, each, base, bare, ed, keys)
    return figures(args, bursts, fill, running, target)


async def ed25519_cold(
    args: argparse.Namespace, latency: dict[str, float]
) -> dict[str, float] | Exception:
    """A cold burst on a stack with SOKOVAN_KEYPAIR_TYPE=ed25519; a failure as a value."""
    settings = settings_of(args, args.pool_size or args.sessions, "ed25519")
    try:
        async with stack(
            agents=args.agents,
            latency=latency,
            worker_concurrency=args.concurrency,
            settings=settings,
        ) as st:
            # A burst as large first, as on the RSA stack: every worker process has met
            # every agent, so the cold burst measures keys, not first connections.
            await ours(st, args.sessions, "warm-", args.timeout)
            drain_pool(st)
            return await ours(st, args.sessions, "ed-", args.timeout, timeline=args.runs)
    except Exception as e:  # the other figures stand; this one is reported as failed
        return e


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--latency-ms", type=float, default=10.0, help="create_kernels delay")
    parser.add_argument(
        "--concurrency", type=int, default=WORKER_CONCURRENCY, help="worker processes"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="bound of one burst")
    parser.add_argument(
        "--call-timeout",
        type=float,
        default=AGENT_CALL_TIMEOUT_SEC,
        help="seconds per agent call on both sides (the product's default)",
    )
    parser.add_argument("--runs", action="store_true", help="print each burst's runs")
    parser.add_argument(
        "--no-ed25519",
        dest="ed25519",
        action="store_false",
        help="skip the cold burst on a stack that makes Ed25519 keys",
    )
    parser.add_argument(
        "--pool-size", type=int, default=0, help="keypair pool target (default: --sessions)"
    )
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    figures = asyncio.run(run(args))
    print_figures(f"bench.launch on {machine()}", figures)


if __name__ == "__main__":
    main()
