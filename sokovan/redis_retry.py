"""Retry with backoff for every Redis/Valkey client, so a short server restart costs nothing."""

from __future__ import annotations

from typing import Any, Final

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

from sokovan import constants as C

# First reconnect backoff; it doubles per attempt up to the cap.
REDIS_RETRY_BACKOFF_SEC: Final = 0.05


def retry_options() -> dict[str, Any]:
    """Connection keyword arguments: reconnect with backoff, check idle pooled connections."""
    return {
        "retry": Retry(
            ExponentialBackoff(cap=C.REDIS_RETRY_BACKOFF_CAP_SEC, base=REDIS_RETRY_BACKOFF_SEC),
            C.REDIS_RETRIES,
        ),
        "retry_on_error": [ConnectionError, TimeoutError],
        "health_check_interval": C.REDIS_HEALTH_CHECK_SEC,
    }


def retry_window() -> float:
    """Seconds of backoff a call sleeps through before it gives up."""
    backoff = ExponentialBackoff(cap=C.REDIS_RETRY_BACKOFF_CAP_SEC, base=REDIS_RETRY_BACKOFF_SEC)
    return sum(backoff.compute(n) for n in range(1, C.REDIS_RETRIES + 1))
