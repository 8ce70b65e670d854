"""Values the stores hand to the domain and take from it: agents, contacts, leftovers,
submissions. Plain data, so the ports can name them without importing an adapter."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sokovan.types import (
    AgentId,
    AgentLiveness,
    ClusterMode,
    KernelId,
    NetworkType,
    ResourceSlot,
    SessionId,
    SessionStatus,
)

# Slots of a request that names none.
DEFAULT_SLOTS = {"cpu": "1", "mem": "1073741824"}

# One kernel as the sweep first reads it: its id as the database's text (32 hex digits on
# SQLite, hyphenated elsewhere; parsed only for suspects), agent, scaling group.
SweepRow = tuple[str, str | None, str]


# Leftover reasons of a kernel ended while its create_kernels was still running: the create
# may still land (CREATE_IN_FLIGHT), or landed after the kernel ended (CREATED_AFTER_END).
# Until such a leftover is closed its kernel's slots stay held, so nothing is placed where
# that container may be running.
CREATE_IN_FLIGHT = "CREATE_IN_FLIGHT"
CREATED_AFTER_END = "CREATED_AFTER_END"
SLOT_HOLDING_LEFTOVERS = frozenset({CREATE_IN_FLIGHT, CREATED_AFTER_END})


@dataclass(frozen=True, slots=True)
class Leftover:
    """A kernel given up on whose container may still exist on its agent."""

    kernel_id: KernelId
    session_id: SessionId
    agent_id: AgentId
    reason: str
    forced_at: datetime
    attempts: int
    destroyed_at: datetime | None


@dataclass(frozen=True, slots=True)
class AgentContact:
    """One agent as the liveness check sees it."""

    id: AgentId
    status: AgentLiveness
    # The last answered ping, or the registration when it never answered.
    last_contact: datetime
    lost_since: datetime | None = None
    instance_id: str | None = None


@dataclass(frozen=True, slots=True)
class AgentRow:
    """A registered agent."""

    id: AgentId
    rpc_addr: str
    scaling_group: str = "default"
    status: str = "ALIVE"
    runtime: str | None = None
    capacity: ResourceSlot = field(default_factory=ResourceSlot)
    public_key: bytes | None = None
    # Maintenance (never written by upsert_agent: a re-registration keeps it).
    schedulable: bool = True
    drain_mode: str | None = None
    drain_deadline: datetime | None = None
    drained_at: datetime | None = None

    @property
    def takes_kernels(self) -> bool:
        """Whether placement may put a new kernel here: ALIVE and not cordoned."""
        return self.status == "ALIVE" and self.schedulable

    @property
    def maintenance(self) -> str:
        """`none`, `cordoned`, `draining` or `drained`."""
        if self.schedulable:
            return "none"
        if self.drained_at is not None:
            return "drained"
        return "draining" if self.drain_mode else "cordoned"


@dataclass(frozen=True, slots=True)
class SessionRequest:
    """What a manager asks for, already validated (sokovan.admission parses the payload)."""

    image: str
    kernels: int = 1
    cluster_mode: ClusterMode = ClusterMode.SINGLE_NODE
    network_type: NetworkType = NetworkType.VOLATILE
    network_id: str | None = None
    resource_slots: ResourceSlot = field(
        default_factory=lambda: ResourceSlot.from_json(DEFAULT_SLOTS)
    )
    environ: Mapping[str, str] = field(default_factory=dict)
    agents: tuple[AgentId, ...] = ()
    name: str = ""
    scaling_group: str = "default"
    user_uuid: uuid.UUID = field(default_factory=lambda: uuid.UUID(int=0))
    access_key: str = ""

    # Wait as PENDING when no agent has room now; False refuses with NoCapacity instead.
    queue: bool = True
    # Chosen by the sender (None: minted here); a stored one is answered, not stored again.
    session_id: SessionId | None = None


@dataclass(frozen=True, slots=True)
class Submitted:
    """A stored submission: placed (SCHEDULED) or waiting for room (PENDING)."""

    session_id: SessionId
    status: SessionStatus
    queue_position: int | None = None


@dataclass
class Scheduled:
    """What one pass over the queue did."""

    placed: list[SessionId] = field(default_factory=list)
    waiting: int = 0
