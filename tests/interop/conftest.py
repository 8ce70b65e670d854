"""Real Backend.AI agents (dummy backend) started with the bai-agent script, per test session."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.conftest import port_is_free, worker_ports

# The script lives in ../shared/interop beside the checkout; BAI_AGENT_SCRIPT overrides it.
_DEFAULT_SCRIPT = Path(__file__).resolve().parents[2].parent / "shared" / "interop" / "bai-agent"
BAI_AGENT = Path(os.environ.get("BAI_AGENT_SCRIPT", str(_DEFAULT_SCRIPT)))
INSTALL_HINT = (
    f"install the interop agent: put the bai-agent script at {_DEFAULT_SCRIPT} "
    "(or set BAI_AGENT_SCRIPT), and make Python 3.13 available to it (pyenv install 3.13, "
    "or BAI_PYTHON=/path/to/python3.13); then run `bai-agent install`"
)
# The agent's venv, where drivers run Backend.AI's own code (tests/interop/bai_*.py).
BAI_HOME = Path(os.environ.get("BAI_HOME", Path.home() / ".cache" / "bai-agent"))
BAI_PYTHON = BAI_HOME / "venv313" / "bin" / "python"
# Install can take minutes the first time; start waits for the agent's RPC ping.
START_TIMEOUT_SEC = 900
STOP_TIMEOUT_SEC = 60


async def run_bai_driver(
    driver: Path, valkey_url: str, db: int, request: Mapping[str, Any]
) -> dict[str, Any]:
    """Runs one operation of a driver of Backend.AI's code in the agent's venv, on `db` of the
    test's Valkey, and returns the driver's JSON reply (its last line of output)."""
    if not BAI_PYTHON.is_file():
        pytest.fail(f"{BAI_PYTHON} is missing: {INSTALL_HINT}")
    url = urlparse(valkey_url)
    argv = [str(BAI_PYTHON), str(driver), f"{url.hostname}:{url.port}", str(db)]
    done = await asyncio.to_thread(
        subprocess.run, [*argv, json.dumps(request)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"Backend.AI's code failed ({driver.name}): {done.stderr[-3000:]}"
    reply: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return reply


@dataclass(frozen=True)
class RealAgent:
    """One running agent: its id, RPC address and, with CURVE, its key files."""

    agent_id: str
    rpc_addr: str
    env: dict[str, str]
    manager_public_key: Path | None = None
    manager_secret_key: Path | None = None
    agent_public_key: Path | None = None


def free_port_block(count: int, avoid: set[int]) -> int:
    """The first port of `count` consecutive free ports, 10 away from the ones in `avoid`.

    Drawn from this worker's share of ports (`worker_ports`): below the kernel's ephemeral
    range, and apart from the ports other pytest-xdist workers hand out.
    """
    share = worker_ports()
    for _ in range(200):
        base = random.randrange(share.start, share.stop - count) // 10 * 10
        if base < share.start or any(abs(base - a) < 10 for a in avoid):
            continue
        if all(port_is_free(p) for p in range(base, base + count)):
            return base
    raise RuntimeError("no block of free ports on loopback")


def _run(command: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BAI_AGENT), command], env=env, capture_output=True, text=True, timeout=timeout
    )


def _parse_start_line(stdout: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stdout.splitlines():
        for part in line.split():
            key, sep, value = part.partition("=")
            if sep:
                fields[key] = value
    return fields


def start_agent(agent_id: str, redis_addr: str, used_ports: set[int], curve: bool) -> RealAgent:
    """Starts one agent instance; fails the test session with what to install if it cannot."""
    if not BAI_AGENT.is_file() or not os.access(BAI_AGENT, os.X_OK):
        pytest.fail(f"{BAI_AGENT} is missing: {INSTALL_HINT}")
    rpc_port = free_port_block(6, used_ports)
    used_ports.add(rpc_port)
    etcd_port = free_port_block(2, used_ports)
    used_ports.add(etcd_port)
    env = {
        **os.environ,
        "REDIS_ADDR": redis_addr,
        "BAI_AGENT_ID": agent_id,
        "BAI_RPC_PORT": str(rpc_port),
        "BAI_ETCD_PORT": str(etcd_port),
        "BAI_AUTO_INSTALL": "1",
        "BAI_CURVE": "1" if curve else "0",
        "BAI_DELAY": "0.05",
    }
    result = _run("start", env, START_TIMEOUT_SEC)
    fields = _parse_start_line(result.stdout)
    if result.returncode != 0 or "RPC" not in fields:
        logs = _run("logs", env, STOP_TIMEOUT_SEC).stdout[-3000:]
        _run("stop", env, STOP_TIMEOUT_SEC)
        pytest.fail(
            f"bai-agent start failed (exit {result.returncode}): {result.stderr[-3000:]}\n"
            f"agent log:\n{logs}\nIf Python 3.13 or etcd is missing: {INSTALL_HINT}"
        )
    keys = {
        k: Path(fields[k])
        for k in ("MANAGER_PUBLIC_KEY", "MANAGER_SECRET_KEY", "AGENT_PUBLIC_KEY")
        if k in fields
    }
    return RealAgent(
        agent_id=fields.get("AGENT_ID", agent_id),
        rpc_addr=fields["RPC"],
        env=env,
        manager_public_key=keys.get("MANAGER_PUBLIC_KEY"),
        manager_secret_key=keys.get("MANAGER_SECRET_KEY"),
        agent_public_key=keys.get("AGENT_PUBLIC_KEY"),
    )


def stop_agent(agent: RealAgent) -> None:
    result = _run("stop", agent.env, STOP_TIMEOUT_SEC)
    if result.returncode != 0:
        print(f"bai-agent stop {agent.agent_id} failed: {result.stderr[-2000:]}")


@pytest.fixture(scope="session")
def redis_addr(valkey_url: str) -> str:
    """host:port of the session's embedded Valkey, as bai-agent wants REDIS_ADDR."""
    url = urlparse(valkey_url)
    return f"{url.hostname}:{url.port}"


@pytest.fixture(scope="session")
def used_ports() -> set[int]:
    return set()


@pytest.fixture(scope="session")
def real_agent(redis_addr: str, used_ports: set[int]) -> Iterator[RealAgent]:
    """A real Backend.AI agent without CURVE."""
    agent = start_agent(f"i-sokovan-{os.getpid()}", redis_addr, used_ports, curve=False)
    yield agent
    stop_agent(agent)


@pytest.fixture(scope="session")
def curve_agent(redis_addr: str, used_ports: set[int]) -> Iterator[RealAgent]:
    """A second real agent that only accepts CURVE-authenticated managers."""
    agent = start_agent(f"i-sokovan-curve-{os.getpid()}", redis_addr, used_ports, curve=True)
    yield agent
    stop_agent(agent)
