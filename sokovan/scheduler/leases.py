"""A run's claim is a lease: renewed while the run's work is alive, lapsing soon after it dies;
and its holders are watched, so a dead worker's run is found in seconds, not a lifetime.

Whoever works for a run renews it: the planning step, and every agent batch of its fan-out
while the batch runs. A crashed or paused holder stops renewing; the lease lapses after its
lifetime and the next start of the handler (or the recovery tick) abandons the run.

The lifetime stays long (30 s) on purpose: it also covers batches waiting in the queue,
which nobody is running yet, so a briefly saturated worker (a CPU hog, a long queue ahead)
keeps its runs. What makes recovery quick is worker liveness: each worker's main process
keeps a key with a 5 s lifetime alive from a thread of its own (tasks.nodes), whatever its
pool and event loops are doing, and every piece of a run's work (planning it, an agent
batch from the moment a worker takes its message) is counted against that worker's
incarnation until it ends. A run with work counted against an incarnation whose key is
gone lost that work with its worker: the recovery tick abandons it at once, without
waiting for the lease, and starts the next run. A worker restarted under the same node
name replaces its incarnation at boot, so its previous one is gone at once, and asks for
recovery as soon as it is ready.

Why this and not the alternatives: a lease short enough to lapse in seconds would lapse
for batches merely waiting in a saturated queue, and a renewal thread per process cannot
speak for work that no process has taken yet; Celery's own worker heartbeats are events
on a broadcast channel, not state: reading them needs a listener running all the time (or
a broadcast ping answered within a timeout from inside a task), where a key with a lifetime
is read by any recovery tick in one round trip. Releasing a restarted worker's leases at
boot alone would not cover takeover by another worker. A false alarm costs only work done
twice: the abandoned run's late outcomes are kept as evidence, never counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from sokovan.ports import Claims

log = logging.getLogger(__name__)

# Renewals per lifetime: one late or lost renewal does not lose the lease.
LEASE_RENEWALS_PER_LIFETIME: Final = 3

LEASE_LAPSED = "abandoned: its lease lapsed (holder gone); unfinished targets go to the next run"
HOLDER_GONE = "abandoned: a worker doing its work is gone; unfinished targets go to the next run"


@dataclass
class Lease:
    """A held lease as its renewal loop sees it."""

    lock_id: str
    token: str
    lost: bool = False


def renew_every(lifetime: float) -> float:
    """The renewal period: a few renewals fit in one lifetime, so one late renewal is harmless."""
    return max(lifetime / LEASE_RENEWALS_PER_LIFETIME, 0.05)


async def _renew_until_cancelled(claims: Claims, lease: Lease, lifetime: float) -> None:
    period = renew_every(lifetime)
    while not lease.lost:
        await asyncio.sleep(period)
        try:
            held = await claims.renew(lease.lock_id, lease.token, lifetime)
        except Exception as e:  # a transient Redis error: the next renewal may still make it
            log.warning("lease %s: renewal failed: %s", lease.lock_id, e)
            continue
        if not held:
            lease.lost = True
            log.warning("lease %s lapsed or was taken over; its run is abandoned", lease.lock_id)
            return


@contextlib.asynccontextmanager
async def kept(claims: Claims, lock_id: str, token: str, lifetime: float) -> AsyncIterator[Lease]:
    """Renews the lease in the background while the body runs."""
    lease = Lease(lock_id, token)
    try:  # at once too: work that starts late (queued behind others) extends the lease first
        lease.lost = not await claims.renew(lock_id, token, lifetime)
    except Exception as e:
        log.warning("lease %s: renewal failed: %s", lock_id, e)
    if lease.lost:
        log.warning("lease %s had lapsed before this work started", lock_id)
    await _count(claims.hold, lock_id, token)
    renewer = asyncio.create_task(_renew_until_cancelled(claims, lease, lifetime))
    try:
        yield lease
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        await _count(claims.unhold, lock_id, token)


async def _count(change: Callable[[str], Awaitable[None]], lock_id: str, token: str) -> None:
    try:
        await change(token)
    except Exception as e:  # unwatched, the work is still covered by its lease
        log.warning("lease %s: counting its holders failed: %s", lock_id, e)


async def lost(claims: Claims, lock_id: str, token: str, run_id: int) -> str | None:
    """Why the run under `token` lost its holder (None while it lives): its lease lapsed, or
    a worker that was doing its work (or had taken one of its batches) is gone."""
    if await claims.holder(lock_id) != token:
        return LEASE_LAPSED
    gone = await claims.gone_holders(token, run_id)
    if gone:
        return f"{HOLDER_GONE} (worker incarnation {', '.join(sorted(gone))})"
    return None


async def take_over(
    claims: Claims, lock_id: str, token: str, lifetime: float, why: str
) -> str | None:
    """Takes the lease from a run that lost its holder; the new token, or None if another
    start holds it now (that start abandons the run itself)."""
    if why != LEASE_LAPSED:
        # The dead holder's lease would live on for its lifetime: end it, fenced by its token.
        await claims.release(lock_id, token)
    return await claims.claim(lock_id, lifetime)
