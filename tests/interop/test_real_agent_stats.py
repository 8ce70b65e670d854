"""SC-RE-002 interop: kernel utilization as the installed Backend.AI agent writes and reads it.

The dummy backend gathers no container measures, so a live dummy agent writes no kernel
statistics. The agent's own stat code runs instead (tests/interop/bai_stats.py, in the
agent's venv): its Metric serializes `cpu_util` and its stat client stores it in the stat
database of the session's Valkey, where reclaim reads it; and its stat client's
`get_kernel_statistics` reads what the reference agent's writer stored for real processes.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from sokovan import constants as C
from sokovan.activity import ValkeyActivity
from sokovan.agentd.stats import KernelStatsWriter
from sokovan.config import presence_url_for
from sokovan.types import KernelId
from tests.interop.conftest import run_bai_driver

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]

DRIVER = Path(__file__).with_name("bai_stats.py")


async def backend_ai(valkey_url: str, request: Mapping[str, Any]) -> dict[str, Any]:
    """Runs one operation of Backend.AI's stat code in the agent's venv, on the stat db."""
    return await run_bai_driver(DRIVER, valkey_url, C.KERNEL_STATS_DB, request)


@pytest.fixture
async def stat_db(valkey_url: str) -> AsyncIterator[Redis]:
    """Our client of the stat database, as build_services builds it by default."""
    client: Redis = Redis.from_url(presence_url_for(valkey_url, C.KERNEL_STATS_DB))
    yield client
    await client.aclose()


@pytest.fixture
def processes() -> Iterator[dict[str, int]]:
    """A busy process (a CPU loop) and an idle one (asleep), as the reference agent runs them."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = subprocess.Popen([shutil.which("sleep") or "sleep", "600"])
    yield {"busy": busy.pid, "idle": idle.pid}
    for p in (busy, idle):
        p.kill()
        p.wait()


async def test_sc_re_002_reclaim_reads_what_the_real_agent_writes(
    valkey_url: str, stat_db: Redis
) -> None:
    """SC-RE-002: Given cpu_util of a busy (900 mcores) and an idle (2 mcores) kernel written by
    the agent's collector code and stat client, When reclaim's activity store reads them,
    Then it reads 90 % and 0.2 %, and a kernel with nothing written is absent."""
    busy, idle, unknown = (KernelId(uuid.uuid4()) for _ in range(3))
    await backend_ai(valkey_url, {"op": "write", "kernels": {str(busy): 900, str(idle): 2}})
    read = await ValkeyActivity(stat_db).utilization([busy, idle, unknown])
    assert read == {busy: 90.0, idle: 0.2}


async def test_sc_re_002_the_real_agent_reads_what_the_reference_agent_writes(
    valkey_url: str, stat_db: Redis, processes: dict[str, int]
) -> None:
    """SC-RE-002: Given the reference agent's writer sampling a busy and an idle process twice,
    When the agent's get_kernel_statistics reads their keys from Valkey, Then it decodes
    cpu_util in millicores with the busy kernel well above the idle one."""
    ids = {name: str(uuid.uuid4()) for name in processes}
    writer = KernelStatsWriter(stat_db)
    pids = {ids[name]: pid for name, pid in processes.items()}
    assert await writer.write(pids) == 2
    await asyncio.sleep(2.0)  # the second sample measures these seconds' CPU time
    assert await writer.write(pids) == 2
    stats = await backend_ai(valkey_url, {"op": "read", "kernels": list(ids.values())})
    busy, idle = (stats[ids["busy"]]["cpu_util"], stats[ids["idle"]]["cpu_util"])
    assert busy["unit_hint"] == idle["unit_hint"] == "millicores"
    # A loaded machine gives the loop a small share of a core; asleep is no share at all.
    assert float(busy["pct"]) > max(0.5, 5 * float(idle["pct"])), (busy, idle)
    assert float(idle["pct"]) < 0.5, idle
    assert "cpu_used" in stats[ids["busy"]]
