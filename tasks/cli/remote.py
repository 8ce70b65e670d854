"""Sending public tasks from the CLI: the broker is checked first and answers have a bound.

The Celery app is built here, on first use, so that a bad setting or a broker that is down
reaches the CLI's error path as one line instead of failing at import.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from sokovan.config import Settings
from tasks.cli.errors import Unreachable

# Longest a broker check waits: a broker on this machine or the LAN answers in milliseconds.
BROKER_CHECK_SEC = 2.0


def broker_reachable(s: Settings, timeout: float = BROKER_CHECK_SEC) -> bool:
    """Whether the broker answers PING within `timeout` seconds (one try, no retries)."""
    client = redis.Redis.from_url(
        s.redis_url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


class Remote:
    """Sends tasks by name and waits for their answer until one shared deadline."""

    def __init__(self, s: Settings, wait: float) -> None:
        self.settings = s
        self.wait = wait
        self.deadline = time.monotonic() + wait

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def send(self, name: str, kwargs: dict[str, Any]) -> Any:
        """Sends a task; raises Unreachable when the broker does not answer."""
        check = min(BROKER_CHECK_SEC, self.wait) if self.wait else BROKER_CHECK_SEC
        if not broker_reachable(self.settings, check):
            raise Unreachable(
                f"the broker at {self.settings.redis_url} does not answer "
                "(SOKOVAN_REDIS_URL; is `sokovan up` running? see `sokovan status`)"
            )
        from tasks.app import create_app

        app = create_app(self.settings)
        return app.send_task(name, kwargs=kwargs, retry=False)

    def answer(self, result: Any) -> dict[str, Any]:
        """The task's JSON answer; raises Unreachable when no worker answers in time."""
        from celery.exceptions import TimeoutError as CeleryTimeout

        try:
            value = result.get(timeout=max(self.remaining(), 0.1))
        except CeleryTimeout as e:
            raise Unreachable(
                f"no answer from a worker within {self.wait:g}s "
                "(is a worker running? see `sokovan status`)"
            ) from e
        if not isinstance(value, dict):
            return {"value": value}
        return value
