"""`sokovan agents`: the agents the scheduler knows (reference or real Backend.AI agents)."""

from __future__ import annotations

import asyncio
from typing import Any

import typer

from sokovan.agentd.specs import parse_size
from sokovan.bootstrap import build_redis
from sokovan.db.repository import AgentRow, SchedulerRepository
from sokovan.errors import ConfigError
from sokovan.scheduler.agents import sync_agents
from sokovan.types import AgentId, ResourceSlot
from tasks.cli.common import JsonOption, engine, print_json, print_table, settings
from tasks.cli.errors import BadInput

app = typer.Typer(help="Registered agents: list, register, sync.", no_args_is_help=True)


def _slots(slots: ResourceSlot) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(slots.to_json().items()))


@app.command("list")
def list_cmd(
    status: str = typer.Option(None, help="Only agents with this status (ALIVE, LOST, ...)."),
    as_json: bool = JsonOption,
) -> None:
    """Lists agents with capacity and what their live kernels hold."""
    repo = SchedulerRepository(engine())
    used = repo.occupied_by_agent()
    agents = [a for a in repo.list_agents() if status is None or a.status == status.upper()]
    docs: list[dict[str, Any]] = [
        {
            "id": a.id,
            "status": a.status,
            "rpc_addr": a.rpc_addr,
            "scaling_group": a.scaling_group,
            "runtime": a.runtime,
            "capacity": a.capacity.to_json(),
            "occupied": used.get(a.id, ResourceSlot()).to_json(),
        }
        for a in agents
    ]
    if as_json:
        print_json({"agents": docs})
        return
    rows = [
        (
            a.id,
            a.status,
            a.rpc_addr,
            a.scaling_group,
            a.runtime or "external",
            _slots(a.capacity),
            _slots(used.get(a.id, ResourceSlot())),
        )
        for a in agents
    ]
    print_table(("AGENT", "STATUS", "RPC", "GROUP", "RUNTIME", "CAPACITY", "OCCUPIED"), rows)


@app.command()
def register(
    agent_id: str = typer.Argument(..., help="The agent's id, as it names itself."),
    rpc_addr: str = typer.Option(..., help="Its RPC address, e.g. tcp://10.0.0.5:6001."),
    scaling_group: str = typer.Option("default", help="Scaling group it serves."),
    cpu: str = typer.Option("4", help="CPU capacity (cores)."),
    mem: str = typer.Option("8g", help="Memory capacity: bytes, or with a unit (8g, 512m)."),
) -> None:
    """Registers an agent that does not register itself (a real Backend.AI agent)."""
    if not rpc_addr.startswith(("tcp://", "ipc://")):
        raise BadInput(f"--rpc-addr {rpc_addr!r}: expected tcp://HOST:PORT")
    try:
        capacity = ResourceSlot.from_json({"cpu": cpu, "mem": parse_size(mem)})
    except ConfigError as e:
        raise BadInput(f"--mem: {e}") from None
    except (ValueError, ArithmeticError):
        raise BadInput(f"--cpu {cpu!r}: expected a number of cores") from None
    SchedulerRepository(engine()).upsert_agent(
        AgentRow(
            id=AgentId(agent_id), rpc_addr=rpc_addr, scaling_group=scaling_group, capacity=capacity
        )
    )
    typer.echo(f"agent {agent_id} registered at {rpc_addr}")


@app.command()
def sync(as_json: bool = JsonOption) -> None:
    """Copies reference agents' self-registrations from Valkey into the agents table."""
    s = settings()
    repo = SchedulerRepository(engine(s))

    async def go() -> dict[str, int]:
        redis = build_redis(s)
        try:
            return await sync_agents(redis, repo)
        finally:
            await redis.aclose()

    counts = asyncio.run(go())
    if as_json:
        print_json(counts)
    else:
        typer.echo(f"agents: {counts['alive']} alive, {counts['lost']} lost")
