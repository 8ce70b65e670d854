"""`make demo-secure`: the demo with signed task messages and CURVE to the agents."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.workers import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]


def test_signed_and_curve_cluster_runs_the_demo() -> None:
    """The whole demo (every session shape, terminate, sweep) on a signed, CURVE cluster;
    the demo's secret variable reaches its kernel and is not stored in clear."""
    done = subprocess.run(
        [sys.executable, "-m", "demo", "--secure"], cwd=ROOT, capture_output=True,
        text=True, timeout=380, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "task messages signed" in done.stdout and "demo OK" in done.stdout
    assert "API_TOKEN reached the kernel" in done.stdout
    worker_log = (ROOT / "var" / "demo-secure" / "logs" / "worker.log").read_text()
    assert "refused task message" not in worker_log
    assert "demo-s3cr3t" not in worker_log
