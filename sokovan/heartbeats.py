"""Liveness keys of beat and the workers in Valkey: written while a process runs, read by
`sokovan status` and the metrics exporter. A key expires when its process is gone."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final, Protocol

from sokovan import constants as C

# A worker's liveness key lapses this long after its last write: a worker that is gone
# disappears within it.
WORKER_HEARTBEAT_TTL_SEC: Final = 30


class KeyStore(Protocol):
    """The part of a synchronous Redis client heartbeats use."""

    def set(self, name: str, value: str, ex: int | None = None) -> Any: ...

    def get(self, name: str) -> Any: ...

    def time(self) -> Any: ...

    def scan_iter(self, match: str | None = None, count: int | None = None) -> Any: ...


@dataclass(frozen=True)
class Heartbeat:
    """Who wrote a liveness key and how long ago (seconds, by the server's clock)."""

    host: str
    pid: int
    age: float


def _now(store: KeyStore) -> float:
    seconds, micros = store.time()
    return float(seconds) + float(micros) / 1e6


def write_beat(store: KeyStore, host: str, pid: int) -> None:
    """beat is alive: its key, stamped with the server's time, for BEAT_HEARTBEAT_TTL_SEC."""
    doc = json.dumps({"host": host, "pid": pid, "at": _now(store)})
    store.set(C.BEAT_HEARTBEAT_KEY, doc, ex=C.BEAT_HEARTBEAT_TTL_SEC)


def read_beat(store: KeyStore) -> Heartbeat | None:
    """beat's last heartbeat, or None when no beat wrote one within the TTL."""
    raw = store.get(C.BEAT_HEARTBEAT_KEY)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        return Heartbeat(str(doc["host"]), int(doc["pid"]), max(0.0, _now(store) - doc["at"]))
    except (ValueError, KeyError, TypeError):
        return None


def write_worker(store: KeyStore, hostname: str) -> None:
    """Worker `hostname` (its Celery node name) is alive, for WORKER_HEARTBEAT_TTL_SEC."""
    store.set(C.WORKER_HEARTBEAT_KEY_PREFIX + hostname, "1", ex=WORKER_HEARTBEAT_TTL_SEC)


def live_workers(store: KeyStore) -> list[str]:
    """Node names of the workers whose heartbeat key has not expired."""
    prefix = C.WORKER_HEARTBEAT_KEY_PREFIX
    names = set()
    for key in store.scan_iter(match=prefix + "*", count=1000):
        text = key.decode() if isinstance(key, bytes) else str(key)
        names.add(text[len(prefix) :])
    return sorted(names)
