"""Live signals of beat and the workers, and beat ticks that arrive too late to be useful.

- beat runs `BeatScheduler` (the app's `beat_scheduler`): Celery's persistent scheduler that
  also rewrites beat's heartbeat key at least every BEAT_HEARTBEAT_SEC.
- each worker rewrites its own key on every Celery event heartbeat (`heartbeat_sent`).
- every tick beat sends is stamped with the time it was sent (`before_task_publish`); the task
  drops a tick older than its interval quietly (`stale_tick`) instead of relying on `expires`,
  which left every tick that waited behind a backlog REVOKED in Flower.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any, Final

import redis
from celery.beat import PersistentScheduler
from celery.signals import before_task_publish, heartbeat_sent, worker_shutting_down

from sokovan import constants as C
from sokovan.bootstrap import build_sync_redis
from sokovan.config import load_settings
from sokovan.heartbeats import write_beat, write_worker

log = logging.getLogger(__name__)

# beat wakes at least this often to rewrite its liveness key (well inside the TTL, a missed
# write is harmless).
BEAT_HEARTBEAT_SEC: Final = 5.0
# A heartbeat write waits at most this long: it must never hold up beat or a worker's timer.
HEARTBEAT_WRITE_TIMEOUT_SEC: Final = 1.0
# A beat tick older than its interval plus this slack is dropped quietly by the task: the next
# one replaces it.
TICK_SLACK_SEC: Final = 1.0

_clients: dict[str, redis.Redis] = {}


def _client() -> redis.Redis:
    """This process's one small client for heartbeats, built on first use."""
    if "heartbeat" not in _clients:
        _clients["heartbeat"] = build_sync_redis(
            load_settings(), timeout=HEARTBEAT_WRITE_TIMEOUT_SEC
        )
    return _clients["heartbeat"]


class BeatScheduler(PersistentScheduler):  # type: ignore[misc]
    """Celery's persistent scheduler that says beat is alive on every wake-up."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        delay = float(super().tick(*args, **kwargs))
        try:
            write_beat(_client(), socket.gethostname(), os.getpid())
        except (redis.RedisError, OSError) as e:  # the broker is down: beat carries on
            log.warning("beat heartbeat not written: %s", e)
        return min(delay, BEAT_HEARTBEAT_SEC)

    def close(self) -> None:
        super().close()
        try:  # a beat that stops says so at once; one that is killed expires with its TTL
            _client().delete(C.BEAT_HEARTBEAT_KEY)
        except (redis.RedisError, OSError) as e:
            log.warning("beat heartbeat not removed: %s", e)


@heartbeat_sent.connect
def _worker_alive(sender: Any = None, **_: Any) -> None:
    hostname = getattr(getattr(sender, "eventer", None), "hostname", None)
    if not hostname:
        return
    try:
        write_worker(_client(), hostname)
    except (redis.RedisError, OSError) as e:
        log.warning("worker heartbeat not written: %s", e)


@worker_shutting_down.connect
def _worker_leaving(sender: Any = None, **_: Any) -> None:
    if not sender:
        return
    try:
        _client().delete(C.WORKER_HEARTBEAT_KEY_PREFIX + str(sender))
    except (redis.RedisError, OSError) as e:
        log.warning("worker heartbeat not removed: %s", e)


@before_task_publish.connect
def _stamp_tick(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None and headers.get("celery_beat_task"):
        headers[C.TICK_AT_HEADER] = time.time()


def stale_tick(request: Any) -> str | None:
    """Why a beat tick is too old to run (sent longer ago than its interval), else None."""
    sent, every = (getattr(request, h, None) for h in (C.TICK_AT_HEADER, C.TICK_EVERY_HEADER))
    if not isinstance(sent, int | float) or not isinstance(every, int | float):
        return None
    age = time.time() - float(sent)
    if age <= float(every) + TICK_SLACK_SEC:
        return None
    return f"a beat tick sent {age:.0f}s ago (every {float(every):g}s): the next one replaces it"
