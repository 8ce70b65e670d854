"""Prometheus exposition of the run ledger, read from SQL at scrape time.

Any number of worker processes write the ledger; one small exporter process reads it, so
no multi-process client state is needed and the numbers are the ledger's own. Names follow
Prometheus conventions: units in the name, one meaning per metric, `_total` counters for
anything a rate is taken of. docs/operator/monitoring.md lists every metric.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final, Protocol
from wsgiref.simple_server import WSGIServer

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sokovan import constants as C
from sokovan.db.ledger import RunLedger
from sokovan.db.listing import status_counts
from sokovan.db.stats import RunStats, SessionStats
from sokovan.heartbeats import KeyStore, live_workers, read_beat
from sokovan.primary_metrics import PrimaryCollector, PrimaryProbe
from sokovan.scheduler.handlers import handler_names
from sokovan.scheduler.handlers import reclaim_sessions as reclaim
from sokovan.scheduler.handlers.sweep_stale_kernels import DECLARATION as SWEEP
from sokovan.scheduler.sweep_record import UNVERIFIED
from sokovan.scheduler.terminator import unverified_kind
from sokovan.types import KernelStatus, RunStatus, SessionStatus

log = logging.getLogger(__name__)

# Transitional session statuses whose oldest member the exporter reports, to catch stuck ones.
TRANSITIONAL_SESSION_STATUSES: Final = (
    "PENDING",
    "SCHEDULED",
    "PREPARING",
    "PULLING",
    "PREPARED",
    "CREATING",
    "TERMINATING",
)

FINISHED = [s for s in RunStatus if s not in (RunStatus.RUNNING, RunStatus.SKIPPED)]
# Slots with a unit of their own get a metric each; any other slot (accelerators) is a count.
_SLOT_METRICS = {
    "cpu": ("sokovan_freed_cpu_cores", "CPU cores released by destroyed kernels."),
    "mem": ("sokovan_freed_memory_bytes", "Memory (bytes) released by destroyed kernels."),
}
# Label values of sokovan_sweep_unverified_kernels, each exported (0 when none).
UNVERIFIED_KINDS = ("identity", "error", "no_answer", "no_agent")
# Broker list names of the task queue: kombu's Redis transport keeps one list per priority step.
_QUEUE_KEYS = ("sokovan", *(f"sokovan\x06\x16{p}" for p in (3, 6, 9)))


class ListLengths(KeyStore, Protocol):
    """The part of a synchronous Redis client the exporter reads."""

    def llen(self, name: str) -> Any: ...


class _Monotonic:
    """Keeps exported counters from falling when retention prunes old runs.

    A drop between two scrapes is taken for pruning and carried as an offset, so
    Prometheus never sees a false counter reset while this process lives.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, ...], float] = {}
        self._offset: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def __call__(self, key: tuple[str, ...], raw: float) -> float:
        with self._lock:
            last = self._last.get(key)
            if last is not None and raw < last:
                self._offset[key] = self._offset.get(key, 0.0) + last - raw
            self._last[key] = raw
            return raw + self._offset.get(key, 0.0)


class LedgerCollector(Collector):
    """Runs, items, durations and kernel aggregates per handler, from the ledger tables."""

    def __init__(
        self,
        ledger: RunLedger,
        stats: RunStats,
        handlers: Sequence[str] | None = None,
        redis: ListLengths | None = None,
    ) -> None:
        self._engine = ledger.engine
        self._redis = redis
        self._stats = stats
        self._ledger = ledger
        # Every declared handler is labelled, whether or not it has run yet.
        self._handlers = tuple(handler_names() if handlers is None else handlers)
        self._mono = _Monotonic()

    def collect(self) -> Iterator[Metric]:
        """One consistent read of the ledger per scrape; a failed read exports nothing."""
        try:
            families = list(self._families())
        except sa.exc.SQLAlchemyError as e:
            log.warning("metrics: reading the ledger failed: %s", e)
            return
        yield from families

    def _families(self) -> Iterable[Metric]:
        yield from self._run_families()
        yield self._histogram()
        yield from self._kernel_families(self._stats.sessions())
        yield from self._handler_families()
        yield from self._status_families()
        yield self._unverified_family()
        yield self._reclaim_family()
        yield from self._broker_families()

    def _run_families(self) -> Iterable[Metric]:
        runs = CounterMetricFamily(
            "sokovan_runs", "Finished handler runs by final status.", labels=["handler", "status"]
        )
        items = CounterMetricFamily(
            "sokovan_run_items",
            "Items of finished runs by result (ok, failed, skipped).",
            labels=["handler", "result"],
        )
        for h in self._stats.handlers():
            for status in FINISHED:
                n = h.by_status.get(str(status), 0)
                key = ("runs", h.handler, str(status))
                runs.add_metric([h.handler, str(status)], self._mono(key, n))
            for result, n in (("ok", h.succeeded), ("failed", h.failed), ("skipped", h.skipped)):
                items.add_metric([h.handler, result], self._mono(("items", h.handler, result), n))
        return runs, items

    def _histogram(self) -> Metric:
        family = HistogramMetricFamily(
            "sokovan_run_duration_seconds",
            "Duration of finished handler runs.",
            labels=["handler"],
        )
        for h in self._stats.duration_histograms():
            key = ("duration", h.handler)
            buckets = [(str(bound), self._mono((*key, str(bound)), n)) for bound, n in h.buckets]
            buckets.append(("+Inf", self._mono((*key, "+Inf"), h.count)))
            family.add_metric([h.handler], buckets, self._mono((*key, "sum"), h.total))
        return family

    def _kernel_families(self, sessions: Sequence[SessionStats]) -> Iterable[Metric]:
        outcomes = CounterMetricFamily(
            "sokovan_kernel_outcomes",
            "Kernels by what the scheduler did to them (created, destroyed, failed, skipped).",
            labels=["outcome"],
        )
        for outcome in ("created", "destroyed", "failed", "skipped"):
            n = sum(getattr(s, outcome) for s in sessions)
            outcomes.add_metric([outcome], self._mono(("kernels", outcome), n))
        totals: dict[str, float] = {"cpu": 0.0, "mem": 0.0}
        for s in sessions:
            for slot, amount in s.freed_slots.items():
                totals[slot] = totals.get(slot, 0.0) + float(amount)
        families: list[Metric] = [outcomes]
        for slot, (name, text) in _SLOT_METRICS.items():
            family = CounterMetricFamily(name, text)
            family.add_metric([], self._mono(("freed", slot), totals[slot]))
            families.append(family)
        other = CounterMetricFamily(
            "sokovan_freed_device_slots",
            "Other slots (accelerator devices or shares) released by destroyed kernels.",
            labels=["slot"],
        )
        for slot, total in sorted(totals.items()):
            if slot not in _SLOT_METRICS:
                other.add_metric([slot], self._mono(("freed", slot), total))
        families.append(other)
        return families

    def _handler_families(self) -> Iterable[Metric]:
        in_flight = GaugeMetricFamily(
            "sokovan_handler_runs_in_flight",
            "Runs of the handler still running.",
            labels=["handler"],
        )
        paused = GaugeMetricFamily(
            "sokovan_handler_paused",
            "1 if an operator paused the handler, else 0.",
            labels=["handler"],
        )
        running = self._stats.running()
        states = self._ledger.handler_states()
        for name in sorted(set(self._handlers) | set(running) | set(states)):
            in_flight.add_metric([name], running.get(name, 0))
            paused.add_metric([name], 1.0 if states.get(name, (False, None))[0] else 0.0)
        return in_flight, paused

    def _status_families(self) -> Iterable[Metric]:
        counts = status_counts(self._engine, TRANSITIONAL_SESSION_STATUSES)
        sessions = GaugeMetricFamily("sokovan_sessions", "Sessions by status.", labels=["status"])
        for status in SessionStatus:
            sessions.add_metric([str(status)], counts.sessions.get(str(status), 0))
        kernels = GaugeMetricFamily("sokovan_kernels", "Kernels by status.", labels=["status"])
        for kstatus in KernelStatus:
            kernels.add_metric([str(kstatus)], counts.kernels.get(str(kstatus), 0))
        agents = GaugeMetricFamily(
            "sokovan_agents", "Registered agents by liveness status.", labels=["status"]
        )
        for name in sorted({"ALIVE", "LOST", "UNREACHABLE"} | set(counts.agents)):
            agents.add_metric([name], counts.agents.get(name, 0))
        oldest = GaugeMetricFamily(
            "sokovan_session_oldest_age_seconds",
            "Age of the longest-waiting session in each transitional status (0: none there).",
            labels=["status"],
        )
        for name in TRANSITIONAL_SESSION_STATUSES:
            oldest.add_metric([name], counts.oldest_session_age.get(name, 0.0))
        return sessions, kernels, agents, oldest

    def _unverified_family(self) -> Metric:
        """Kernels the newest sweep left RUNNING because their agent could not confirm."""
        family = GaugeMetricFamily(
            "sokovan_sweep_unverified_kernels",
            "Kernels the newest sweep run could not verify with their agent (skipped, still"
            " RUNNING), by reason.",
            labels=["reason"],
        )
        counts = dict.fromkeys(UNVERIFIED_KINDS, 0)
        prefix = f"{UNVERIFIED}: "
        for error, n in self._stats.newest_skips(SWEEP.name, prefix).items():
            kind = unverified_kind(error.removeprefix(prefix))
            counts[kind] = counts.get(kind, 0) + n
        for kind, n in counts.items():
            family.add_metric([kind], n)
        return family

    def _reclaim_family(self) -> Metric:
        """Sessions reclaim ended, would have ended (report-only) or left to its brake."""
        family = CounterMetricFamily(
            "sokovan_reclaim_sessions",
            "Sessions the reclaim handler judged reclaimable, by result (reclaimed,"
            " would_reclaim in report-only mode, braked) and reason.",
            labels=["result", "reason"],
        )
        kinds = {reclaim.RECLAIMED: "reclaimed", reclaim.WOULD_RECLAIM: "would_reclaim"}
        kinds[reclaim.BRAKED] = "braked"
        counts = {
            (result, reason): 0
            for result in kinds.values()
            for reason in (C.LIFETIME_EXCEEDED_REASON, C.IDLE_TIMEOUT_REASON)
        }
        for error, n in self._stats.item_errors(reclaim.NAME).items():
            kind, _, reason = error.partition(": ")
            if kind in kinds:
                counts[(kinds[kind], reason)] = counts.get((kinds[kind], reason), 0) + n
        for (result, reason), n in sorted(counts.items()):
            value = self._mono(("reclaim", result, reason), n)
            family.add_metric([result, reason], value)
        return family

    def _broker_families(self) -> Iterable[Metric]:
        """Queue depth and dead-lettered tasks, read from the broker (absent if unreadable)."""
        up = GaugeMetricFamily("sokovan_broker_up", "1 if the exporter could read the broker.")
        if self._redis is None:
            return ()
        try:
            depth = sum(int(self._redis.llen(key)) for key in _QUEUE_KEYS)
            dead = int(self._redis.llen(C.DEADLETTER_KEY))
            workers = len(live_workers(self._redis))
            beat = read_beat(self._redis) is not None
        except Exception as e:  # any client error: report the broker down, keep the rest
            log.warning("metrics: reading the broker failed: %s", e)
            up.add_metric([], 0.0)
            return (up,)
        up.add_metric([], 1.0)
        queue = GaugeMetricFamily(
            "sokovan_queue_messages", "Task messages waiting in the queue.", labels=["queue"]
        )
        queue.add_metric(["sokovan"], depth)
        dead_family = GaugeMetricFamily(
            "sokovan_deadletter_messages", "Tasks moved aside after too many deliveries."
        )
        dead_family.add_metric([], dead)
        alive = GaugeMetricFamily(
            "sokovan_workers_alive", "Workers whose heartbeat key is live (30 s after the last)."
        )
        alive.add_metric([], workers)
        beat_up = GaugeMetricFamily("sokovan_beat_up", "1 while beat's heartbeat key is live.")
        beat_up.add_metric([], 1.0 if beat else 0.0)
        return up, queue, dead_family, alive, beat_up


def registry_for(
    ledger: RunLedger,
    stats: RunStats,
    handlers: Sequence[str] | None = None,
    redis: ListLengths | None = None,
    primary: PrimaryProbe | None = None,
) -> CollectorRegistry:
    """A registry of the ledger's and the primary's collectors (read at scrape time)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ledger, stats, handlers, redis))
    registry.register(PrimaryCollector(primary))
    return registry


def serve(
    ledger: RunLedger,
    stats: RunStats,
    port: int,
    addr: str = C.METRICS_HOST,
    handlers: Sequence[str] | None = None,
    redis: ListLengths | None = None,
    primary: PrimaryProbe | None = None,
) -> tuple[WSGIServer, threading.Thread]:
    """Serves /metrics on `addr:port` from a daemon thread; shut it down with server.shutdown()."""
    registry = registry_for(ledger, stats, handlers, redis, primary)
    server, thread = start_http_server(port, addr=addr, registry=registry)
    log.info("ledger metrics on http://%s:%s/metrics", addr, port)
    return server, thread
