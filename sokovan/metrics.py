"""Prometheus exposition of the run ledger, read from SQL at scrape time.

Any number of worker processes write the ledger; one small exporter process reads it, so
no multi-process client state is needed and the numbers are the ledger's own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
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

from sokovan.db.ledger import RunLedger
from sokovan.db.stats import RunStats, SessionStats
from sokovan.scheduler.handlers import handler_names
from sokovan.types import RunStatus

log = logging.getLogger(__name__)

FINISHED = [s for s in RunStatus if s not in (RunStatus.RUNNING, RunStatus.SKIPPED)]


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

    def __init__(self, engine: sa.Engine, handlers: Sequence[str] | None = None) -> None:
        self._stats = RunStats(engine)
        self._ledger = RunLedger(engine)
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
        yield self._state_family()

    def _run_families(self) -> Iterable[Metric]:
        runs = CounterMetricFamily(
            "sokovan_runs", "Finished handler runs by final status.", labels=["handler", "status"]
        )
        items = CounterMetricFamily(
            "sokovan_run_items",
            "Items of finished runs by result (ok, failed, skipped).",
            labels=["handler", "result"],
        )
        ratio = GaugeMetricFamily(
            "sokovan_run_item_failure_ratio",
            "Failed over attempted items of all recorded runs.",
            labels=["handler"],
        )
        for h in self._stats.handlers():
            for status in FINISHED:
                n = h.by_status.get(str(status), 0)
                key = ("runs", h.handler, str(status))
                runs.add_metric([h.handler, str(status)], self._mono(key, n))
            for result, n in (("ok", h.succeeded), ("failed", h.failed), ("skipped", h.skipped)):
                items.add_metric([h.handler, result], self._mono(("items", h.handler, result), n))
            ratio.add_metric([h.handler], h.failure_rate)
        return runs, items, ratio

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
        kernels = CounterMetricFamily(
            "sokovan_kernels",
            "Kernels by what the scheduler did to them (created, destroyed, failed, skipped).",
            labels=["outcome"],
        )
        for outcome in ("created", "destroyed", "failed", "skipped"):
            n = sum(getattr(s, outcome) for s in sessions)
            kernels.add_metric([outcome], self._mono(("kernels", outcome), n))
        freed = CounterMetricFamily(
            "sokovan_freed_slots",
            "Occupied slots released by destroyed kernels, summed per slot name.",
            labels=["slot"],
        )
        totals: dict[str, float] = {}
        for s in sessions:
            for slot, amount in s.freed_slots.items():
                totals[slot] = totals.get(slot, 0.0) + float(amount)
        for slot, total in sorted(totals.items()):
            freed.add_metric([slot], self._mono(("freed", slot), total))
        return kernels, freed

    def _state_family(self) -> Metric:
        state = GaugeMetricFamily(
            "sokovan_handler_state",
            "Per handler: runs in flight (running) and whether it is paused (1/0).",
            labels=["handler", "state"],
        )
        running = self._stats.running()
        paused = self._ledger.handler_states()
        for name in sorted(set(self._handlers) | set(running) | set(paused)):
            state.add_metric([name, "running"], running.get(name, 0))
            state.add_metric([name, "paused"], 1.0 if paused.get(name, (False, None))[0] else 0.0)
        return state


def registry_for(engine: sa.Engine, handlers: Sequence[str] | None = None) -> CollectorRegistry:
    """A registry holding only the ledger collector (read at scrape time, not at registration)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(engine, handlers))
    return registry


def serve(
    engine: sa.Engine, port: int, addr: str = "127.0.0.1", handlers: Sequence[str] | None = None
) -> tuple[WSGIServer, threading.Thread]:
    """Serves /metrics on `addr:port` from a daemon thread; shut it down with server.shutdown()."""
    server, thread = start_http_server(port, addr=addr, registry=registry_for(engine, handlers))
    log.info("ledger metrics on http://%s:%s/metrics", addr, port)
    return server, thread
