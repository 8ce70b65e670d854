"""SC-RE-002 interop: reclaim reads kernel statistics in the format the installed Backend.AI
agent's stat collector serializes them, and that agent's reader reads ours.

The dummy backend gathers no container measures, so a live dummy agent writes no kernel
statistics; the values are made by the installed agent's own `Metric.to_serializable_dict`
(ai.backend.agent.stats) and decoded as its stat client's `get_kernel_statistics` does.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis

from sokovan import constants as C
from sokovan.activity import ValkeyActivity, encode_cpu_stats
from sokovan.config import presence_url_for
from sokovan.types import KernelId

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

AGENT_PYTHON = Path.home() / ".cache" / "bai-agent" / "venv313" / "bin" / "python"

WRITE = """
from decimal import Decimal
import msgpack
from ai.backend.agent.stats import Measurement, Metric, MetricTypes, MovingStatistics
m = Metric(key="cpu_util", type=MetricTypes.UTILIZATION, unit_hint="millicores",
           stats=MovingStatistics(), stats_filter=frozenset({"avg", "max"}),
           current=Decimal(0), capacity=Decimal(1000))
m.update(Measurement(Decimal("250"), capacity=Decimal(1000)))
print(msgpack.packb({"cpu_util": m.to_serializable_dict()}).hex())
"""
READ = """
import sys, msgpack
from ai.backend.common.clients.valkey_client.valkey_stat import client
stats = msgpack.unpackb(bytes.fromhex(sys.argv[1]), raw=False)  # as get_kernel_statistics
print(stats["cpu_util"]["pct"])
"""


def agent_python(script: str, *args: str) -> str:
    if not AGENT_PYTHON.exists():
        pytest.skip(f"the Backend.AI agent is not installed ({AGENT_PYTHON})")
    done = subprocess.run(
        [str(AGENT_PYTHON), "-c", script, *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def test_sc_re_002_reads_what_the_real_agent_serializes(valkey_url: str) -> None:
    """A value the real agent's serializer made, under a kernel id in the stat db: 25 %."""
    value = bytes.fromhex(agent_python(WRITE))
    stats: Redis = Redis.from_url(presence_url_for(valkey_url, C.KERNEL_STATS_DB))
    kernel_id = KernelId(uuid.uuid4())
    try:
        await stats.set(str(kernel_id), value, ex=60)
        assert await ValkeyActivity(stats).utilization([kernel_id]) == {kernel_id: 25.0}
    finally:
        await stats.aclose()


def test_sc_re_002_the_real_agent_reads_what_the_reference_agent_writes() -> None:
    assert float(agent_python(READ, encode_cpu_stats(250.0).hex())) == 25.0
