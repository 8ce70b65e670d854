"""Domain types: ids, statuses and value objects shared by every layer."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final, NewType

SessionId = NewType("SessionId", uuid.UUID)
KernelId = NewType("KernelId", uuid.UUID)
AgentId = NewType("AgentId", str)
RunId = NewType("RunId", int)

JSON = dict[str, Any]


def utcnow() -> datetime:
    """Now, timezone-aware UTC."""
    return datetime.now(UTC)


class KernelStatus(StrEnum):
    """Lifecycle of one kernel (container), as Backend.AI names it."""

    PENDING = "PENDING"
    SCHEDULED = "SCHEDULED"
    PREPARING = "PREPARING"
    PULLING = "PULLING"
    PREPARED = "PREPARED"
    CREATING = "CREATING"
    RUNNING = "RUNNING"
    TERMINATING = "TERMINATING"
    TERMINATED = "TERMINATED"
    CANCELLED = "CANCELLED"
    ERROR = "ERROR"


class SessionStatus(StrEnum):
    """Lifecycle of a session, as Backend.AI names it."""

    PENDING = "PENDING"
    SCHEDULED = "SCHEDULED"
    PREPARING = "PREPARING"
    PULLING = "PULLING"
    PREPARED = "PREPARED"
    CREATING = "CREATING"
    RUNNING = "RUNNING"
    TERMINATING = "TERMINATING"
    TERMINATED = "TERMINATED"
    CANCELLED = "CANCELLED"
    ERROR = "ERROR"


TERMINAL_KERNEL_STATUSES = frozenset(
    {KernelStatus.TERMINATED, KernelStatus.CANCELLED, KernelStatus.ERROR}
)
TERMINAL_SESSION_STATUSES = frozenset(
    {SessionStatus.TERMINATED, SessionStatus.CANCELLED, SessionStatus.ERROR}
)


class HealthCheckStatus(StrEnum):
    """Presence verdict read from Valkey for one kernel."""

    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"
    STALE = "STALE"
    ALIVE = "HEALTHY"  # the scenario documents' word for HEALTHY


class ClusterMode(StrEnum):
    SINGLE_NODE = "single-node"
    MULTI_NODE = "multi-node"


class NetworkType(StrEnum):
    VOLATILE = "volatile"
    PERSISTENT = "persistent"
    HOST = "host"


class RunTrigger(StrEnum):
    BEAT = "beat"
    MANUAL = "manual"
    EVENT = "event"
    API = "api"


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"
    ABANDONED = "abandoned"
    SKIPPED = "skipped"
    # The handler held back on purpose (a braked sweep): nothing was changed, and why is noted.
    HELD = "held"


class Operation(StrEnum):
    """An agent call fanned out one task per agent."""

    DESTROY_KERNELS = "destroy_kernels"
    CHECK_AND_PULL = "check_and_pull"
    CREATE_KERNELS = "create_kernels"


class ResourceSlot(dict[str, Decimal]):
    """Resource amounts by slot name (cpu, mem, cuda.device, ...)."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> ResourceSlot:
        """Parses a JSON mapping of slot name to number or numeric string."""
        return cls({str(k): Decimal(str(v)) for k, v in (data or {}).items()})

    def to_json(self) -> dict[str, str]:
        return {k: format(v, "f") for k, v in self.items()}

    def __add__(self, other: Mapping[str, Decimal]) -> ResourceSlot:
        out = ResourceSlot(self)
        for k, v in other.items():
            out[k] = out.get(k, Decimal(0)) + v
        return out


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """What an agent needs to find or pull an image."""

    canonical: str
    architecture: str = "x86_64"
    registry_name: str = "cr.backend.ai"
    registry_url: str = "https://cr.backend.ai"
    is_local: bool = False
    digest: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KernelInfo:
    """One kernel as the scheduler sees it."""

    id: KernelId
    session_id: SessionId
    agent_id: AgentId | None
    status: KernelStatus = KernelStatus.RUNNING
    image: str = ""
    architecture: str = "x86_64"
    occupied_slots: ResourceSlot = field(default_factory=ResourceSlot)
    cluster_role: str = "main"
    cluster_idx: int = 1
    cluster_hostname: str = "main1"
    scaling_group: str = "default"
    agent_addr: str | None = None
    # What the agent needs to create the kernel (Backend.AI's KernelCreationConfig fields).
    local_rank: int = 0
    uid: int | None = None
    main_gid: int | None = None
    supplementary_gids: tuple[int, ...] = ()
    resource_opts: Mapping[str, Any] = field(default_factory=dict)
    mounts: tuple[Mapping[str, Any], ...] = ()
    bootstrap_script: str | None = None
    startup_command: str | None = None
    internal_data: Mapping[str, Any] | None = None
    preopen_ports: tuple[int, ...] = ()
    # The scheduler's own notes on the kernel: attempts, next attempt, last error.
    status_data: Mapping[str, Any] = field(default_factory=dict)
    # False: create_kernels was never sent for it, so no agent can hold its container.
    create_sent: bool = True


# The user of a session made without one; a UUID is immutable, so one instance serves all.
NIL_UUID: Final = uuid.UUID(int=0)


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One session and its kernels."""

    id: SessionId
    kernels: tuple[KernelInfo, ...]
    name: str = ""
    status: SessionStatus = SessionStatus.RUNNING
    scaling_group: str = "default"
    cluster_mode: ClusterMode = ClusterMode.SINGLE_NODE
    network_type: NetworkType = NetworkType.VOLATILE
    network_id: str | None = None
    user_uuid: uuid.UUID = NIL_UUID
    access_key: str = ""
    environ: Mapping[str, str] = field(default_factory=dict)
    status_info: str | None = None
    # Fields the launcher passes to agents (Backend.AI's session row has them).
    session_type: str = "interactive"
    user_email: str = ""
    user_name: str = ""
    idle_timeout: int = 600
    status_changed_at: datetime | None = None
    status_data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KernelTerminationResult:
    """Outcome of one destroy_kernel call."""

    kernel_id: KernelId
    agent_id: AgentId
    occupied_slots: ResourceSlot
    success: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class KernelTransitionInfo:
    """A kernel a handler judged, and why."""

    kernel_id: KernelId
    from_status: KernelStatus
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class KernelExecutionResult:
    """What a kernel handler decided: successes keep status, failures move on."""

    successes: list[KernelTransitionInfo] = field(default_factory=list)
    failures: list[KernelTransitionInfo] = field(default_factory=list)
    # Kernels left as they are without a verdict (agent could not tell, or the brake held).
    skipped: list[KernelTransitionInfo] = field(default_factory=list)
    # Per-kernel evidence for the run ledger, keyed by kernel id string.
    evidence: dict[str, JSON] = field(default_factory=dict)
    # Why the handler refused to judge this run (outage guard); None when it judged.
    brake: str | None = None


@dataclass(frozen=True, slots=True)
class KernelStatusTransitions:
    """Where a kernel handler moves its successes and failures; None keeps the status."""

    success: KernelStatus | None
    failure: KernelStatus | None


@dataclass(frozen=True, slots=True)
class KernelPresence:
    """Presence of one kernel as read from Valkey in stage 1 of the sweep."""

    presence: HealthCheckStatus
    last_presence: float | None = None
    last_check: float | None = None
    created_at: float | None = None


class AgentLiveness(StrEnum):
    """Whether an agent answers: only ALIVE agents get new kernels."""

    ALIVE = "ALIVE"
    UNREACHABLE = "UNREACHABLE"
    LOST = "LOST"


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    """An agent's instance (boot) marker as recorded at registration or sync, and since when."""

    agent_id: AgentId
    instance_id: str | None = None
    instance_since: datetime | None = None


@dataclass(frozen=True, slots=True)
class AgentAddress:
    """How to reach one agent: its RPC address and, with CURVE, its public key."""

    agent_id: AgentId
    rpc_addr: str
    public_key: bytes | None = None


@dataclass(frozen=True, slots=True)
class AgentBatch:
    """The items of one operation for one agent: one Celery task."""

    agent_id: AgentId
    items: tuple[JSON, ...]


class Verdict(StrEnum):
    """What became of one item of a run; a handler's declared transitions are keyed by it."""

    OK = "ok"  # the agent did what was asked
    FAILED = "failed"  # the agent refused or could not be asked; the item is tried again
    SKIPPED = "skipped"  # nothing was asked (no agent assigned)
    DEAD = "dead"  # the sweep: presence lapsed and the agent confirmed "not running"
    ALIVE = "alive"  # the sweep: a suspect its agent says still runs
    UNVERIFIED = "unverified"  # the sweep: the agent could not vouch for the kernel
    BRAKED = "braked"  # the sweep: the brake held the whole run
    DEFERRED = "deferred"  # the sweep: confirmed dead, left to a later run by the reap rate
    FORCED = "forced"  # given up past its deadline (FORCE_TERMINATED)
    LOST = "agent_lost"  # given up past its deadline on a lost agent (AGENT_LOST)
    NEVER_CREATED = "never_created"  # terminated with no destroy: no create was ever sent
    HANDED_OVER = "deadline_path"  # a lost agent's kernel, handed to the deadline path
    RECLAIMED = "reclaimed"  # reclaim: the session went TERMINATING (idle or over age)
    WOULD_RECLAIM = "would_reclaim"  # reclaim in report-only mode: nothing was terminated


# How the ledger counts each verdict: a success, a failure, or skipped.
SUCCESS_VERDICTS: Final = frozenset(
    {
        Verdict.OK,
        Verdict.DEAD,
        Verdict.ALIVE,
        Verdict.NEVER_CREATED,
        Verdict.HANDED_OVER,
        Verdict.RECLAIMED,
    }
)
SKIPPED_VERDICTS: Final = frozenset(
    {Verdict.SKIPPED, Verdict.UNVERIFIED, Verdict.BRAKED, Verdict.DEFERRED, Verdict.WOULD_RECLAIM}
)


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    """Result of one item (kernel or agent call) of a fan-out, JSON-safe.

    `verdict` says what became of the item; `ok` and `skipped` are how the ledger counts it
    and follow from the verdict (given `ok`/`skipped` alone, the verdict is ok, failed or
    skipped). `moved` is True once the verdict's declared kernel move was applied, in the
    same transaction that recorded the outcome.
    """

    item_id: str
    agent_id: str | None
    ok: bool = False
    error: str | None = None
    duration: float = 0.0
    detail: JSON = field(default_factory=dict)
    skipped: bool = False
    verdict: Verdict = None  # type: ignore[assignment]  # set from ok/skipped when omitted
    moved: bool = False

    def __post_init__(self) -> None:
        if self.verdict is None:
            plain = Verdict.SKIPPED if self.skipped else Verdict.OK if self.ok else Verdict.FAILED
            object.__setattr__(self, "verdict", plain)
        else:
            verdict = Verdict(self.verdict)
            object.__setattr__(self, "verdict", verdict)
            object.__setattr__(self, "ok", verdict in SUCCESS_VERDICTS)
            object.__setattr__(self, "skipped", verdict in SKIPPED_VERDICTS)

    def to_json(self) -> JSON:
        return {
            "item_id": self.item_id,
            "agent_id": self.agent_id,
            "ok": self.ok,
            "error": self.error,
            "duration": self.duration,
            "detail": self.detail,
            "skipped": self.skipped,
            "verdict": str(self.verdict),
            "moved": self.moved,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ItemOutcome:
        verdict = data.get("verdict")
        return cls(
            item_id=str(data["item_id"]),
            agent_id=None if data.get("agent_id") is None else str(data["agent_id"]),
            ok=bool(data["ok"]),
            error=data.get("error"),
            duration=float(data.get("duration") or 0.0),
            detail=dict(data.get("detail") or {}),
            skipped=bool(data.get("skipped", False)),
            verdict=None if verdict is None else Verdict(str(verdict)),  # type: ignore[arg-type]
            moved=bool(data.get("moved", False)),
        )


@dataclass(frozen=True, slots=True)
class KernelMove:
    """A guarded status move of some kernels, with per-kernel column values."""

    verdict: Verdict
    kernel_ids: tuple[KernelId, ...]
    to: KernelStatus
    allowed_from: tuple[KernelStatus, ...]
    status_info: str | None = None
    values: Mapping[KernelId, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Recorded:
    """What recording a batch of outcomes did."""

    counted: bool  # False: the run was no longer live; the rows are evidence only
    inserted: int
    moved: Mapping[Verdict, Sequence[KernelId]]


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run as stored."""

    id: RunId
    handler: str
    trigger: str
    status: RunStatus
    operation: str | None
    requested: int
    succeeded: int
    failed: int
    skipped: int
    started_at: datetime
    finished_at: datetime | None
    deadline_at: datetime | None
    fanout_id: str | None
    claim_token: str | None
    error: str | None
    scope: Any
    note: str | None

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish, None while running."""
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True, slots=True)
class RunItemRecord:
    """One item's outcome within a run."""

    item_id: str
    agent_id: str | None
    ok: bool
    skipped: bool
    error: str | None
    duration: float
    evidence: dict[str, Any]
    # False for what reached the run after it was abandoned or closed: evidence only.
    counted: bool = True
