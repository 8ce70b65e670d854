"""Prometheus families of the Valkey primary behind Sentinels: who it is, how often it moved.

Read from the Sentinels at scrape time, as the ledger's families are read from SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sokovan.redis_clients import PrimaryState

# What the exporter asks: the primary now, or None (no Sentinel answers, or not Sentinel mode).
PrimaryProbe = Callable[[], PrimaryState | None]


class PrimaryCollector(Collector):
    """sokovan_redis_failovers_total always (0 outside Sentinel mode); sokovan_redis_primary
    with the primary's address when a Sentinel names one."""

    def __init__(self, probe: PrimaryProbe | None) -> None:
        self._probe = probe
        self._last_epoch = 0

    def collect(self) -> Iterator[Metric]:
        state = self._probe() if self._probe is not None else None
        if state is not None:
            # A scrape no Sentinel answers keeps the last count rather than fall to zero.
            self._last_epoch = max(self._last_epoch, state.config_epoch)
        failovers = CounterMetricFamily(
            "sokovan_redis_failovers",
            "Failovers of the Valkey primary, as the Sentinels count them (their config epoch).",
        )
        failovers.add_metric([], self._last_epoch)
        yield failovers
        if self._probe is None:
            return
        primary = GaugeMetricFamily(
            "sokovan_redis_primary",
            "1 for the Valkey primary the Sentinels name now; no sample if none answers.",
            labels=["address"],
        )
        if state is not None:
            primary.add_metric([state.address], 1.0)
        yield primary
