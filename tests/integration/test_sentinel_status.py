"""SC-HA-003: in Sentinel mode `sokovan status` and the exporter name the current primary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sokovan.bootstrap import build_primary_probe
from sokovan.primary_metrics import PrimaryCollector
from tests.sentinel import SentinelRig, ha_env, sentinel_rig
from tests.workers import ROOT, SchedulerEnv, make_env, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def status(senv: SchedulerEnv) -> dict[str, object]:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "sokovan"), "status", "--json"],
        cwd=ROOT,
        env=senv.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    doc: dict[str, object] = json.loads(done.stdout)
    return doc


# Sample name -> (labels, value) of each of its samples.
Scrape = dict[str, list[tuple[dict[str, str], float]]]


def scrape(registry: CollectorRegistry) -> Scrape:
    """Sample name -> (labels, value) of each of its samples."""
    out: Scrape = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def primary_address(rig: SentinelRig) -> str:
    return f"127.0.0.1:{rig.primary_port()}"


def test_status_and_metrics_follow_a_failover(tmp_path: Path) -> None:
    """SC-HA-003: `sokovan status --json` (settings only) says the broker is reachable and
    names the primary in `redis_primary`, keeping its other fields; after the primary is
    SIGKILLed it names the promoted replica. The exporter's sokovan_redis_primary follows,
    and sokovan_redis_failovers_total grows."""
    with sentinel_rig(tmp_path / "ha") as rig:
        senv = ha_env(tmp_path, rig)
        before = status(senv)
        assert before["redis_primary"] == primary_address(rig)
        assert before["broker"] == {"reachable": True}
        assert {"redis_url", "embedded_valkey", "database", "workers"} <= set(before)
        assert before["embedded_valkey"] is False

        registry = CollectorRegistry(auto_describe=False)
        registry.register(PrimaryCollector(build_primary_probe(senv.settings, timeout=2.0)))
        first = scrape(registry)
        assert first["sokovan_redis_primary"] == [({"address": primary_address(rig)}, 1.0)]
        failovers = first["sokovan_redis_failovers_total"][0][1]

        old = rig.kill_primary()
        rig.wait_new_primary(old)
        # Sentinels that decide in 1 s may fail over once more on a loaded machine (the new
        # primary slow to answer while its replica syncs): status and the exporter are held to
        # the primary every Sentinel names around the reading, whichever promotion that is.
        seen: list[tuple[dict[str, object], Scrape]] = []

        def named_the_primary() -> bool:
            new = rig.wait_new_primary(old)
            after, second = status(senv), scrape(registry)
            seen.append((after, second))
            if rig.wait_new_primary(old) != new:
                return False
            address = f"127.0.0.1:{new}"
            return after["redis_primary"] == address and second["sokovan_redis_primary"] == [
                ({"address": address}, 1.0)
            ]

        wait_for(named_the_primary, timeout=60, interval=0.5, what="status and metrics to follow")
        after, second = seen[-1]
        assert after["broker"] == {"reachable": True}
        assert second["sokovan_redis_failovers_total"][0][1] > failovers


def test_status_outside_sentinel_mode_names_no_primary(tmp_path: Path, valkey_url: str) -> None:
    """SC-HA-003: the field is there, null, when no Sentinel is configured."""
    assert status(make_env(tmp_path, valkey_url))["redis_primary"] is None
