"""A run's claim is a lease: renewed while the run's work is alive, lapsing soon after it dies.

Whoever works for a run renews it: the planning step, and every agent batch of its fan-out
while the batch runs. A crashed or paused holder stops renewing; the lease lapses after its
short lifetime and the next start of the handler (or the recovery tick) abandons the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sokovan import constants as C
from sokovan.ports import Claims

log = logging.getLogger(__name__)


@dataclass
class Lease:
    """A held lease as its renewal loop sees it."""

    lock_id: str
    token: str
    lost: bool = False


def renew_every(lifetime: float) -> float:
    """The renewal period: a few renewals fit in one lifetime, so one late renewal is harmless."""
    return max(lifetime / C.LEASE_RENEWALS_PER_LIFETIME, 0.05)


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
    renewer = asyncio.create_task(_renew_until_cancelled(claims, lease, lifetime))
    try:
        yield lease
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
