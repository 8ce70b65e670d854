"""`sokovan agents`: the agents the scheduler knows (reference or real Backend.AI agents)."""

from __future__ import annotations

import asyncio

import typer

from sokovan.bootstrap import build_redis
from sokovan.cli.common import engine, settings, table
from sokovan.db.repository import AgentRow, SchedulerRepository
from sokovan.scheduler.agents import sync_agents
from sokovan.types import AgentId, ResourceSlot

app = typer.Typer(help="Registered agents: list, register, sync.", no_args_is_help=True)


@app.command("list")
def list_agents() -> None:
    """Lists agents with capacity and what their live kernels hold."""
    repo = SchedulerRepository(engine())
    used = repo.occupied_by_agent()
    rows = [
        (
            a.id,
            a.status,
            a.rpc_addr,
            a.scaling_group,
            a.runtime or "external",
            ",".join(f"{k}={v}" for k, v in sorted(a.capacity.to_json().items())),
            ",".join(
                f"{k}={v}" for k, v in sorted(used.get(a.id, ResourceSlot()).to_json().items())
            ),
        )
        for a in repo.list_agents()
    ]
    typer.echo(table(("AGENT", "STATUS", "RPC", "GROUP", "RUNTIME", "CAPACITY", "OCCUPIED"), rows))


@app.command()
def register(
    agent_id: str,
    rpc_addr: str = typer.Option(..., help="e.g. tcp://10.0.0.5:6001"),
    scaling_group: str = typer.Option("default"),
    cpu: str = typer.Option("4"),
    mem: str = typer.Option("8589934592"),
) -> None:
    """Registers an agent that does not register itself (a real Backend.AI agent)."""
    SchedulerRepository(engine()).upsert_agent(
        AgentRow(
            id=AgentId(agent_id),
            rpc_addr=rpc_addr,
            scaling_group=scaling_group,
            capacity=ResourceSlot.from_json({"cpu": cpu, "mem": mem}),
        )
    )
    typer.echo(f"agent {agent_id} registered at {rpc_addr}")


@app.command()
def sync() -> None:
    """Copies reference agents' self-registrations from Valkey into the agents table."""
    s = settings()
    repo = SchedulerRepository(engine(s))

    async def go() -> dict[str, int]:
        redis = build_redis(s)
        try:
            return await sync_agents(redis, repo)
        finally:
            await redis.aclose()

    typer.echo(str(asyncio.run(go())))
