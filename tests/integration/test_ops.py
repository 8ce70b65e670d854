"""The shipped alert rules and dashboard: promtool accepts them; they name only served metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sokovan.db.ledger import RunLedger
from sokovan.types import ItemOutcome, RunStatus, RunTrigger, Verdict
from tests.conftest import free_port
from tests.workers import SchedulerEnv, make_env, stop_process

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "ops" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "ops" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "sokovan.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}

pytestmark = pytest.mark.integration


def promtool() -> str:
    """The promtool binary; the test fails (never skips) without it."""
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: `apt-get install prometheus` (Debian) installs it")
    return found


def rule_exprs() -> list[str]:
    """Every `expr:` of the alert rules (block scalars included)."""
    text = RULES.read_text()
    return re.findall(r"expr:\s*(?:\|\n)?((?:.+\n?)+?)(?=\s+for:|\s+labels:)", text)


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def test_promtool_accepts_the_alert_rules() -> None:
    """`promtool check rules` passes on ops/prometheus/alerts.yml."""
    done = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def seed_ledger(senv: SchedulerEnv) -> None:
    """A held sweep and reclaim and a partial terminate run, so label values have samples."""
    ledger = RunLedger(senv.engine)
    sweep = ledger.open_run("sweep_stale_kernels", RunTrigger.BEAT)
    ledger.close_run(sweep, note="default: brake: presence unavailable", held=True)
    term = ledger.open_run("terminate_sessions", RunTrigger.API)
    ledger.record_items(
        term,
        [
            ItemOutcome("k1", "a1", ok=True, detail={"occupied_slots": {"cpu": "1"}}),
            ItemOutcome("k2", "a1", ok=False, error="boom"),
        ],
    )
    ledger.close_run(term)
    reclaim = ledger.open_run("reclaim_sessions", RunTrigger.BEAT)
    ledger.record_items(
        reclaim,
        [ItemOutcome("s1", None, error="braked: IDLE_TIMEOUT", verdict=Verdict.BRAKED)],
    )
    ledger.close_run(reclaim, note="default: brake share", held=True)
    assert ledger.get_run(sweep).status == RunStatus.HELD


@pytest.fixture
def exporter(exporter_at: tuple[str, int]) -> str:
    """The /metrics body of the real `sokovan metrics` process on a seeded ledger."""
    return exporter_at[0]


@pytest.fixture
def exporter_at(tmp_path: Path, valkey_url: str) -> Iterator[tuple[str, int]]:
    """The real `sokovan metrics` process on a seeded ledger; yields its body and port."""
    senv = make_env(tmp_path, valkey_url)
    seed_ledger(senv)
    port = free_port()
    log = tmp_path / "metrics.log"
    bin_dir = Path(sys.executable).parent
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(bin_dir / "sokovan"), "metrics", "--port", str(port)],
            env=senv.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        body = None
        while body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    body = r.read().decode()
            except OSError:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        yield body, port
    finally:
        stop_process(proc)


def served(body: str) -> tuple[set[str], dict[str, list[dict[str, str]]]]:
    """Sample names a query may use, and the label sets of each sample name."""
    names: set[str] = set()
    labels: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(body):
        names.update(family.name + s for s in SUFFIXES.get(family.type, ("",)))
        for sample in family.samples:
            names.add(sample.name)
            labels.setdefault(sample.name, []).append(dict(sample.labels))
    return names, labels


def test_dashboard_and_rules_name_only_served_metrics(exporter: str) -> None:
    """Every metric (and every exact label value) in the dashboard and the rules is served."""
    names, labels = served(exporter)
    exprs = rule_exprs() + dashboard_exprs()
    assert len(exprs) >= 20
    used = {m for e in exprs for m in re.findall(r"\bsokovan_[a-z_]+\b", e)}
    assert used and used <= names, sorted(used - names)
    for expr in exprs:
        for metric, matchers in re.findall(r"(sokovan_[a-z_]+)\{([^}]*)\}", expr):
            for key, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', matchers):
                if op not in ("=", "=~"):
                    continue
                seen = {ls.get(key) for ls in labels.get(metric, [])}
                for alternative in value.split("|"):
                    assert alternative in seen, f"{metric}{{{key}={alternative!r}}} not served"


def test_exported_metrics_pass_promtool_lint(exporter: str) -> None:
    """`promtool check metrics` finds nothing against Prometheus naming in the exposition."""
    done = subprocess.run(
        [promtool(), "check", "metrics"], input=exporter, capture_output=True, text=True
    )
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr
    assert "sokovan_run_item_failure_ratio" not in exporter
    assert "sokovan_handler_state" not in exporter and "sokovan_freed_slots_total" not in exporter


def test_promtool_rule_tests_pass() -> None:
    """SC-OP-010: `promtool test rules` fires the exporter-, workers- and beat-down alerts on
    series where they are down, and not while they are up (ops/prometheus/alerts_test.yml)."""
    done = subprocess.run(
        [promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def prometheus() -> str:
    """The prometheus binary; the test fails (never skips) without it."""
    found = shutil.which("prometheus")
    if found is None:
        pytest.fail("prometheus is missing: `apt-get install prometheus` (Debian) installs it")
    return found


def test_sc_op_010_real_prometheus_alerts_on_exporter_and_workers_down(
    exporter_at: tuple[str, int], tmp_path: Path
) -> None:
    """SC-OP-010: a real Prometheus, scraping the real exporter (no worker running) and an
    exporter target that is down, with the shipped rules, raises SokovanExporterDown and
    SokovanWorkersDown (pending within their `for`), and not SokovanBrokerUnreadable."""
    _, port = exporter_at
    dead, web = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{json.dumps(str(RULES))}]\n"
        "scrape_configs:\n"
        "  - job_name: sokovan\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{port}', '127.0.0.1:{dead}']}}]\n"
    )
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                prometheus(),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{web}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        wanted = {"SokovanExporterDown", "SokovanWorkersDown"}
        seen: dict[str, dict[str, str]] = {}
        while not wanted <= set(seen):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, (seen, log.read_text()[-3000:])
            time.sleep(1)
            try:
                url = f"http://127.0.0.1:{web}/api/v1/alerts"
                with urllib.request.urlopen(url, timeout=5) as r:
                    alerts = json.loads(r.read())["data"]["alerts"]
            except OSError:
                continue
            seen = {a["labels"]["alertname"]: a["labels"] for a in alerts}
        assert seen["SokovanExporterDown"]["instance"] == f"127.0.0.1:{dead}"
        assert "SokovanBrokerUnreadable" not in seen
    finally:
        stop_process(proc)
