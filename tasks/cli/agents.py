"""`sokovan agents`: the agents the scheduler knows (reference or real Backend.AI agents)."""

from __future__ import annotations

import asyncio
from typing import Any, Final

import typer

from sokovan.admission.agents import registration
from sokovan.admission.parse import parse_call
from sokovan.admission.refusal import Refusal
from sokovan.admission.schemas import RegisterAgentPayload
from sokovan.agentd.specs import parse_size
from sokovan.bootstrap import build_redis
from sokovan.errors import ConfigError, InvalidRequest
from sokovan.records import AgentRow
from sokovan.scheduler.agents import sync_agents
from sokovan.scheduler.liveness import hand_to_deadline_path
from sokovan.scheduler.transitions import NON_TERMINAL_KERNEL
from sokovan.types import AgentId, ResourceSlot
from tasks.cli.common import JsonOption, print_json, print_table
from tasks.cli.errors import BadInput, Refused
from tasks.cli.maintenance import cordon_cmd, drain_cmd, uncordon_cmd
from tasks.cli.parsing import agent_status
from tasks.cli.root import root
from tasks.cli.watch import IntervalOption, WatchOption, watch_command

# status_info of sessions ended because their agent was removed by an operator.
AGENT_REMOVED_REASON: Final = "AGENT_REMOVED"

app = typer.Typer(
    help="Registered agents: list, register, cordon, drain, remove, sync.", no_args_is_help=True
)


def _slots(slots: ResourceSlot) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(slots.to_json().items()))


def _scheduling(a: AgentRow) -> str:
    if a.maintenance == "draining" and a.drain_deadline is not None:
        return f"draining until {a.drain_deadline.strftime('%Y-%m-%d %H:%M:%S')}"
    return "enabled" if a.maintenance == "none" else a.maintenance


@app.command("list")
def list_cmd(
    status: str = typer.Option(
        None, help="Only agents with this status (ALIVE, LOST, ...).", callback=agent_status
    ),
    as_json: bool = JsonOption,
    watch: bool = WatchOption,
    interval: float = IntervalOption,
) -> None:
    """Lists agents with capacity and what their live kernels hold."""
    if watch:
        draw = lambda: list_cmd(status, as_json=False, watch=False, interval=interval)  # noqa: E731
        return watch_command("sokovan agents list", as_json, interval, draw)
    repo = root().repository
    used = repo.occupied_by_agent()
    agents = [a for a in repo.list_agents() if status is None or a.status == status.upper()]
    contact = {c.id: c.last_contact for c in repo.agent_contacts()}
    docs: list[dict[str, Any]] = [
        {
            "id": a.id,
            "status": a.status,
            "last_contact": contact[a.id].isoformat() if a.id in contact else None,
            "rpc_addr": a.rpc_addr,
            "scaling_group": a.scaling_group,
            "runtime": a.runtime,
            "capacity": a.capacity.to_json(),
            "occupied": used.get(a.id, ResourceSlot()).to_json(),
            "schedulable": a.schedulable,
            "maintenance": a.maintenance,
            "drain_deadline": a.drain_deadline.isoformat() if a.drain_deadline else None,
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
            contact[a.id].strftime("%Y-%m-%d %H:%M:%S") if a.id in contact else "-",
            a.rpc_addr,
            a.scaling_group,
            a.runtime or "external",
            _slots(a.capacity),
            _slots(used.get(a.id, ResourceSlot())),
            _scheduling(a),
        )
        for a in agents
    ]
    head = ("AGENT", "STATUS", "LAST CONTACT", "RPC", "GROUP", "RUNTIME", "CAPACITY", "OCCUPIED")
    print_table((*head, "SCHEDULING"), rows)


@app.command()
def register(
    agent_id: str = typer.Argument(..., help="The agent's id, as it names itself."),
    rpc_addr: str = typer.Option(..., help="Its RPC address: tcp://HOST:PORT, port 1..65535."),
    scaling_group: str = typer.Option("default", help="Scaling group it serves."),
    cpu: str = typer.Option("4", help="CPU capacity (cores)."),
    mem: str = typer.Option("8g", help="Memory capacity: bytes, or with a unit (8g, 512m)."),
) -> None:
    """Registers an agent that does not register itself (a real Backend.AI agent).

    Checked by the schema of the `sokovan.agents.register` task: bad input exits 2 naming
    the field."""
    try:
        mem_bytes = parse_size(mem)
    except ConfigError as e:
        raise BadInput(f"capacity.mem: {e}") from None
    kwargs = {
        "agent_id": agent_id,
        "rpc_addr": rpc_addr,
        "scaling_group": scaling_group,
        "capacity": {"cpu": cpu, "mem": mem_bytes},
    }
    payload = parse_call(RegisterAgentPayload, (), kwargs)
    if isinstance(payload, Refusal):
        raise BadInput(payload.error)
    root().repository.upsert_agent(registration(payload))
    typer.echo(f"agent {payload.agent_id} registered at {payload.rpc_addr}")


@app.command()
def remove(
    agent_id: str = typer.Argument(..., help="The agent to unregister."),
    force: bool = typer.Option(
        False, "--force", help="Remove even with live kernels: their sessions end, deadline now."
    ),
) -> None:
    """Unregisters an agent; refuses while kernels live there unless --force."""
    repo = root().repository
    try:
        live = repo.remove_agent(AgentId(agent_id), force=force)
    except InvalidRequest as e:
        raise Refused(str(e)) from None
    note = ""
    if live:
        infos = repo.kernels_in(list(NON_TERMINAL_KERNEL), only=live)
        sessions = asyncio.run(hand_to_deadline_path(root().store, infos, AGENT_REMOVED_REASON))
        note = f"; {len(sessions)} session(s) TERMINATING, deadline now"
    typer.echo(f"agent {agent_id} removed{note}")


app.command("cordon")(cordon_cmd)
app.command("uncordon")(uncordon_cmd)
app.command("drain")(drain_cmd)


@app.command()
def sync(as_json: bool = JsonOption) -> None:
    """Copies reference agents' self-registrations from Valkey into the agents table."""
    r = root()
    s = r.settings

    async def go() -> dict[str, int]:
        redis = build_redis(s)
        try:
            return await sync_agents(redis, r.store)
        finally:
            await redis.aclose()

    counts = asyncio.run(go())
    if as_json:
        print_json(counts)
    else:
        typer.echo(f"agents: {counts['alive']} alive, {counts['lost']} lost")
