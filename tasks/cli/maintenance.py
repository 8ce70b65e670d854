"""`sokovan agents cordon|uncordon|drain`: node maintenance, persisted in SQL."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import typer

from sokovan.admission.agents import maintenance_doc
from sokovan.admission.parse import parse_call
from sokovan.admission.refusal import Refusal
from sokovan.admission.schemas import AgentPayload, DrainAgentPayload, Payload
from sokovan.db.repository import SchedulerRepository
from sokovan.errors import UnknownAgent
from sokovan.scheduler.maintenance import cordon, uncordon
from sokovan.types import AgentId
from tasks import names
from tasks.cli.common import JsonOption, print_json
from tasks.cli.errors import BadInput, CliError, Refused, refusal
from tasks.cli.progress import Snapshot, follow
from tasks.cli.remote import Remote
from tasks.cli.root import root

# Seconds to wait for a worker's answer to the drain task (it only starts the work).
ANSWER_SEC = 30.0
# After the drain's deadline, `--wait` waits this much longer: the terminate handler gives
# up what is left on its next tick (every few seconds), check_agents marks the drain done.
DRAIN_WAIT_GRACE_SEC = 30.0
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


def parse_duration(field: str, text: str) -> float:
    """`90`, `90s`, `10m`, `2h` as seconds; anything else is bad input naming `field`."""
    found = re.fullmatch(r"\s*(\d{1,6}(?:\.\d{1,3})?)\s*([smh]?)\s*", text.lower())
    if not found:
        raise BadInput(f"{field}: {text[:40]!r} is not a duration (e.g. 90s, 10m, 2h)")
    return float(found.group(1)) * _UNITS[found.group(2)]


def _checked(model: type[Payload], kwargs: dict[str, Any]) -> Any:
    parsed = parse_call(model, (), kwargs)
    if isinstance(parsed, Refusal):
        raise BadInput(parsed.error)
    return parsed


def _sessions_note(repo: SchedulerRepository, agent_id: AgentId) -> str:
    count = len(repo.sessions_on_agent(agent_id))
    return f"its {count} session(s) run on" if count else "it holds no session"


def cordon_cmd(
    agent_id: str = typer.Argument(..., help="The agent to cordon."),
    as_json: bool = JsonOption,
) -> None:
    """Stops new placements on an agent (persisted); its running sessions are untouched."""
    payload = _checked(AgentPayload, {"agent_id": agent_id})
    repo = root().repository
    try:
        row = asyncio.run(cordon(root().store, AgentId(payload.agent_id)))
    except UnknownAgent as e:
        raise Refused(str(e)) from None
    if as_json:
        print_json(maintenance_doc(row))
        return
    typer.echo(f"agent {row.id} cordoned: no new kernel; {_sessions_note(repo, row.id)}")


def uncordon_cmd(
    agent_id: str = typer.Argument(..., help="The agent to take new sessions again."),
    as_json: bool = JsonOption,
) -> None:
    """Lets placement use an agent again (and stops a drain where it is)."""
    payload = _checked(AgentPayload, {"agent_id": agent_id})
    try:
        row = asyncio.run(uncordon(root().store, AgentId(payload.agent_id)))
    except UnknownAgent as e:
        raise Refused(str(e)) from None
    if as_json:
        print_json(maintenance_doc(row))
        return
    typer.echo(f"agent {row.id} uncordoned: it takes new sessions")


def drain_cmd(
    agent_id: str = typer.Argument(..., help="The agent to drain."),
    deadline: str = typer.Option(
        "10m", help="By then the agent holds no kernel (90s, 10m, 2h); what is left is forced."
    ),
    wait: bool = typer.Option(False, "--wait", help="Show progress until the agent is empty."),
    wait_for_sessions: bool = typer.Option(
        False,
        "--wait-for-sessions",
        help="Let sessions end on their own until the deadline instead of terminating them.",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Cordons an agent, then ends its sessions by the deadline (AGENT_DRAINED)."""
    kwargs = {
        "agent_id": agent_id,
        "deadline_seconds": parse_duration("deadline_seconds", deadline),
        "wait_for_sessions": wait_for_sessions,
    }
    payload: DrainAgentPayload = _checked(DrainAgentPayload, kwargs)
    r = root()
    repo = r.repository
    try:
        repo.get_agent(payload.agent_id)  # unknown: `refused: ...`, exit 1, asking no worker
    except UnknownAgent as e:
        raise Refused(str(e)) from None
    started = time.monotonic()
    remote = Remote(r, ANSWER_SEC)
    answer = remote.answer(remote.send(names.AGENTS_DRAIN, kwargs))
    if answer.get("error"):
        raise refusal(answer)
    if wait:
        until = started + payload.deadline_seconds + DRAIN_WAIT_GRACE_SEC
        answer["live_kernels"] = _follow_drain(repo, AgentId(payload.agent_id), until)
    _report(answer, as_json, wait)


def _follow_drain(repo: SchedulerRepository, agent_id: AgentId, until: float) -> int:
    """Draws the drain's progress until the agent holds no kernel or `until`; kernels left."""
    first = repo.live_kernel_count(agent_id)

    def poll() -> Snapshot:
        live = repo.live_kernel_count(agent_id)
        label = "drained" if live == 0 else "draining"
        return Snapshot(label, first, max(first - live, 0), 0, 0, live == 0)

    return first - follow(f"agent {agent_id}", poll, until).done


def _report(answer: dict[str, Any], as_json: bool, waited: bool) -> None:
    left = answer.get("live_kernels")
    if as_json:
        print_json(answer)
    else:
        what = "waiting for" if answer.get("mode") == "wait" else "terminating"
        typer.echo(
            f"agent {answer['agent_id']} cordoned and draining until {answer['drain_deadline']}: "
            f"{what} {answer['sessions']} session(s)"
        )
        if waited and not left:
            typer.echo(f"agent {answer['agent_id']} holds no kernel")
    if waited and left:
        raise CliError(f"failed: agent {answer['agent_id']} still holds {left} kernel(s)")
