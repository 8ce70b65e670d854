"""Ending N PENDING sessions: batch messages beside one message per session, same worker.

Ours: `sokovan.sessions.terminate`, one message per 1,000 ids (what `sokovan session
terminate` of many ids sends). Baseline, in the same run on the same stack: one
`sokovan.session.terminate` per session (what it sent before). Each is timed from the first
send until every session is CANCELLED in the database; the sessions are put back to PENDING
between the two rounds. The queue's handler is paused, so no cancellation lets it place the
sessions still waiting.

    python -m bench.cancel [--sessions 6000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

from bench.harness import (
    Figure,
    Stack,
    bulk_sessions,
    commandstats,
    count_sessions,
    machine,
    print_figures,
    set_statuses,
    stack,
    stats_delta,
    wait_until,
)
from sokovan import constants as C
from sokovan.scheduler.handlers import schedule_sessions
from sokovan.types import KernelStatus, SessionStatus
from tasks.names import SESSION_TERMINATE, SESSIONS_TERMINATE


def _send(st: Stack, name: str, calls: Sequence[dict[str, Any]]) -> None:
    """Every call as one task, over one producer (as the CLI sends them)."""
    with st.app.producer_or_acquire() as producer:
        for kwargs in calls:
            st.app.send_task(name, kwargs=kwargs, producer=producer)


async def _round(
    st: Stack, name: str, calls: Sequence[dict[str, Any]], count: int, limit: float
) -> dict[str, float]:
    """Sends the calls; seconds until `count` sessions are CANCELLED, and tasks sent."""
    before = commandstats(st.redis_url)
    began = time.monotonic()
    await asyncio.to_thread(_send, st, name, calls)

    def cancelled() -> bool:
        return count_sessions(st.senv.engine, SessionStatus.CANCELLED) >= count

    try:
        ended = await wait_until(cancelled, limit, interval=0.1, what="every session cancelled")
        seconds = ended - began
    except TimeoutError:
        seconds = float("nan")
    done = count_sessions(st.senv.engine, SessionStatus.CANCELLED)
    delta = stats_delta(before, commandstats(st.redis_url))
    return {"seconds": seconds, "tasks": delta.get("lpush", 0), "lost": count - done}


async def run(args: argparse.Namespace) -> list[Figure]:
    name = f"end {args.sessions:,} PENDING sessions"
    try:
        async with stack(agents=2) as st:
            st.ledger.set_paused(schedule_sessions.NAME, True, "bench.cancel: the queue holds")
            made = bulk_sessions(
                st.senv.engine,
                st.agent_ids,
                args.sessions,
                SessionStatus.PENDING,
                KernelStatus.PENDING,
            )
            ids = [str(uuid.UUID(str(sid))) for sid, _, _ in made]
            single = await _round(
                st,
                SESSION_TERMINATE,
                [{"session_id": i} for i in ids],
                args.sessions,
                args.timeout,
            )
            set_statuses(st.senv.engine, SessionStatus.PENDING, KernelStatus.PENDING)
            step = C.SESSION_BATCH_MAX
            batch = await _round(
                st,
                SESSIONS_TERMINATE,
                [{"session_ids": ids[i : i + step]} for i in range(0, len(ids), step)],
                args.sessions,
                args.timeout,
            )
    except Exception as e:  # a benchmark reports, it never aborts
        return [Figure.failure(name, e)]
    note = (
        f"tasks sent: {batch['tasks']:.0f} batch message(s) against {single['tasks']:.0f} "
        f"single ones; sessions left uncancelled: {batch['lost']:.0f} (batch), "
        f"{single['lost']:.0f} (single); baseline = one sokovan.session.terminate per session"
    )
    return [Figure(f"{name}: seconds", batch["seconds"], single["seconds"], "s", note=note)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=6000)
    parser.add_argument("--timeout", type=float, default=600.0, help="bound of one round")
    return parser.parse_args(argv)


def main() -> None:
    figures = asyncio.run(run(parse_args()))
    print_figures(f"bench.cancel on {machine()}", figures)


if __name__ == "__main__":
    main()
