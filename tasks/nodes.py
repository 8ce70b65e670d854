"""Worker liveness: each worker tree is one incarnation, alive while its main process beats.

At boot (worker_init, before the pool forks) a worker takes a new incarnation id, records
it as its node name's current one, and ends its previous incarnation's liveness at once:
a worker restarted under the same name speaks for the tree that died. A thread of the main
process then rewrites the liveness key every NODE_BEAT_SEC, whatever the pool's processes
and their event loops are doing; the key lapses NODE_TTL_SEC after the tree is killed.
Work done under a run's lease is counted against the incarnation (the pool's processes
inherit it), and so is every agent batch from the moment the main process receives its
message until a pool process has run it: recovery finds a dead worker's runs in seconds
(sokovan.scheduler.leases), even when it died before starting a batch it had taken.
"""

from __future__ import annotations

import logging
import secrets
import threading
from typing import Any, Final

from celery.signals import task_postrun, task_received, worker_init, worker_ready, worker_shutdown
from redis import Redis

from sokovan import constants as C
from sokovan.bootstrap import build_node_redis
from sokovan.config import load_settings
from sokovan.scheduler.claims import UNHOLD, alive_key, run_holders_key
from tasks import names

log = logging.getLogger(__name__)

# Five missed beats before a live worker looks gone, yet a killed one is known gone in 5 s.
NODE_TTL_SEC: Final = 5.0


class NodeBeat:
    """One worker incarnation's liveness key, kept alive by a thread."""

    def __init__(self, redis: Redis, node: str) -> None:
        self.redis = redis
        self.node = node
        self.incarnation = secrets.token_hex(8)
        self.previous: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def boot(self) -> None:
        """Becomes the node's current incarnation; the previous one is gone from now on."""
        previous = self.redis.getset(f"{C.NODE_KEY_PREFIX}{self.node}", self.incarnation)
        self.beat()
        if previous is not None:
            self.previous = previous.decode() if isinstance(previous, bytes) else str(previous)
            self.redis.delete(alive_key(self.previous))
            log.warning(
                "worker %s restarted: incarnation %s replaces %s, whose runs are abandoned",
                self.node,
                self.incarnation,
                self.previous,
            )

    def beat(self) -> None:
        self.redis.set(alive_key(self.incarnation), self.node, px=int(NODE_TTL_SEC * 1000))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sokovan-node-beat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * C.NODE_BEAT_SEC)

    def _run(self) -> None:
        while not self._stop.wait(C.NODE_BEAT_SEC):
            try:
                self.beat()
            except Exception as e:  # Valkey away for a moment: the next beat may make it
                log.warning("worker %s: liveness beat failed: %s", self.node, e)


_beat: NodeBeat | None = None


def incarnation() -> str | None:
    """This worker tree's incarnation (inherited by its pool processes); None elsewhere."""
    return None if _beat is None else _beat.incarnation


@worker_init.connect
def _boot(sender: Any = None, **_: Any) -> None:
    global _beat
    node = str(getattr(sender, "hostname", None) or "worker")
    beat = NodeBeat(build_node_redis(load_settings()), node)
    try:
        beat.boot()
    except Exception as e:  # without Valkey the worker cannot work anyway; leases still hold
        log.warning("worker %s: liveness not started: %s", node, e)
        return
    _beat = beat


@worker_ready.connect
def _ready(sender: Any = None, **_: Any) -> None:
    if _beat is None:
        return
    _beat.beat()
    _beat.start()
    if _beat.previous is not None and sender is not None:
        # The previous incarnation's runs are known dead now: recover them at once.
        sender.app.send_task(names.MAINTENANCE_RECOVER)


def _batch_run_id(name: Any, args: Any) -> int | None:
    """The run of an agent batch task (its first argument), or None for other tasks."""
    if not isinstance(name, str) or not name.startswith(names.AGENT_TASK_PREFIX):
        return None
    try:
        return int(args[0])
    except (IndexError, KeyError, TypeError, ValueError):
        return None


@task_received.connect
def _batch_taken(request: Any = None, **_: Any) -> None:
    run_id = _batch_run_id(getattr(request, "name", None), getattr(request, "args", None))
    if _beat is None or run_id is None:
        return
    key = run_holders_key(run_id)
    try:
        pipe = _beat.redis.pipeline(transaction=True)
        pipe.hincrby(key, _beat.incarnation, 1)
        pipe.expire(key, int(C.LEASE_HOLDERS_TTL_SEC))
        pipe.execute()
    except Exception as e:  # unwatched, the batch is still covered by its run's lease
        log.warning("run %s: counting a taken batch failed: %s", run_id, e)


@task_postrun.connect
def _batch_done(sender: Any = None, args: Any = None, **_: Any) -> None:
    run_id = _batch_run_id(getattr(sender, "name", None), args)
    if _beat is None or run_id is None:
        return
    try:
        _beat.redis.eval(UNHOLD, 1, run_holders_key(run_id), _beat.incarnation)
    except Exception as e:
        log.warning("run %s: counting a finished batch failed: %s", run_id, e)


@worker_shutdown.connect
def _stop(**_: Any) -> None:
    if _beat is not None:
        _beat.stop()
