"""What a handler declares, and the abstract base of handlers that judge kernels.

Handlers judge; the coordinator decides: it claims the handler's lock, opens the run,
calls the planner, applies the declared transitions to the outcomes, and closes the run.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from sokovan.types import (
    AgentId,
    ItemOutcome,
    KernelExecutionResult,
    KernelId,
    KernelInfo,
    KernelStatus,
    Operation,
    RunId,
    SessionStatus,
    Verdict,
)

if TYPE_CHECKING:
    from sokovan.config import Settings
    from sokovan.ports import (
        ActivityStore,
        AgentClientPool,
        FanOut,
        KernelEnvirons,
        NetworkPlugin,
        SchedulerStore,
        SecretStore,
    )
    from sokovan.scheduler.launcher import SessionLauncher
    from sokovan.scheduler.launcher.keys import ClusterKeys
    from sokovan.scheduler.terminator import SessionTerminator

FollowUps = Sequence[tuple[str, Sequence[str] | None]]
# Kernel ids that moved, by the verdict whose transition moved them.
Moved = Mapping[Verdict, Sequence[KernelId]]


@dataclass(frozen=True, slots=True)
class Plan:
    """What a handler's planning step did within a run."""

    requested: int
    dispatched: bool = False  # True: a fan-out will complete the run later
    outcomes: Sequence[ItemOutcome] = ()
    bulk_ok: int = 0  # items that succeeded without an outcome row each
    note: str | None = None
    follow_ups: FollowUps = ()
    # Set when the handler held back on purpose (a braked sweep): the run is `held`.
    held: str | None = None
    # Set when some targets were left undecided (kernels the sweep could not verify): the run
    # is `partial` although nothing failed.
    partial: str | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """Where the kernels of one verdict go, from the handler's target statuses."""

    kernel: KernelStatus
    source: tuple[KernelStatus, ...]  # only kernels in these statuses move
    reason: str | None = None  # status_info written with the move
    # Extra column values per kernel, read from its outcome (a container id, ...).
    values: Callable[[ItemOutcome], Mapping[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class GiveUp:
    """What happens to a target that stays in the handler's state too long."""

    deadline_setting: str  # Settings field: seconds a target may stay in the state
    attempts_setting: str | None = None  # Settings field: tries before giving up
    then: str = ""  # what the deadline path does, in one line (CLI, docs)
    # The session state whose time the deadline bounds (None: not a session's state).
    state: SessionStatus | None = None

    def deadline(self, settings: Settings) -> float:
        """Seconds a target may stay in the handler's state, as configured."""
        return float(getattr(settings, self.deadline_setting))

    def attempts(self, settings: Settings) -> int:
        """Tries before giving up, as configured; 1 when the policy names none."""
        if self.attempts_setting is None:
            return 1
        return int(getattr(settings, self.attempts_setting))


@dataclass(frozen=True, slots=True)
class Targets:
    """What a handler's runs take up, in which statuses; its budget counts the same unit."""

    sessions: tuple[SessionStatus, ...] = ()
    kernels: tuple[KernelStatus, ...] = ()

    @property
    def unit(self) -> Literal["sessions", "kernels"]:
        return "sessions" if self.sessions else "kernels"

    def describe(self) -> str:
        """E.g. "TERMINATING sessions", for the CLI and the docs."""
        statuses = self.sessions or self.kernels
        shown = ", ".join(str(s) for s in statuses[:3]) + (" ..." if len(statuses) > 3 else "")
        return f"{shown} {self.unit}"


Planner = Callable[[RunId, Sequence[str] | None, int], Awaitable[Plan]]
# Called with a batch of outcomes after the coordinator applied the declared transitions.
Completer = Callable[[RunId, Sequence[ItemOutcome], Moved], Awaitable[FollowUps]]
BatchRunner = Callable[
    ["HandlerContext", AgentId, Sequence[Mapping[str, Any]]], Awaitable[list[ItemOutcome]]
]


@dataclass
class HandlerContext:
    """The adapters a handler may use; built once per process by the composition root."""

    settings: Settings
    repository: SchedulerStore
    terminator: SessionTerminator
    pool: AgentClientPool
    secrets: SecretStore
    fanout: FanOut
    network_plugins: Mapping[str, NetworkPlugin] = field(default_factory=dict)
    # Resolves kernel environs in the create task (none travel in messages); None: as sent.
    environs: KernelEnvirons | None = None
    # Cluster keypairs (pooled, else made on demand); None makes every key on demand.
    keys: ClusterKeys | None = None
    # Kernel utilization and last-activity stamps (reclaim); None: idle reclaim is off.
    activity: ActivityStore | None = None

    def launcher(self, fanout: FanOut | None = None) -> SessionLauncher:
        """A launcher over these adapters, dispatching through `fanout` (default: the port)."""
        from sokovan.scheduler.launcher import SessionLauncher

        return SessionLauncher(
            self.pool,
            fanout or self.fanout,
            self.repository,
            self.secrets,
            dict(self.network_plugins),
            default_network_driver=self.settings.network_default_driver,
            start_session_timeout=self.settings.start_session_timeout,
            keys=self.keys,
        )


@dataclass
class HandlerRuntime:
    """A declared handler bound to its adapters: what the coordinator runs."""

    declaration: HandlerDeclaration
    plan: Planner
    # Keyed by operation; None completes the outcomes the planner itself returned.
    complete: Mapping[Operation | None, Completer] = field(default_factory=dict)
    # Called once a run is abandoned (after its recorded outcomes were applied), under the
    # handler's lease: targets the lost work left half-way are given a way out.
    abandoned: Callable[[RunId], Awaitable[FollowUps]] | None = None

    @property
    def name(self) -> str:
        return self.declaration.name

    @property
    def lock_id(self) -> str:
        return self.declaration.lock_id


@dataclass(frozen=True)
class HandlerDeclaration:
    """Everything about a handler that is not its code: one per module in this package."""

    name: str  # stable public name: ledger rows, claims, CLI, metrics labels
    lock_id: str  # Backend.AI's lock name; handlers touching the same targets share one
    description: str  # one line: `handlers list`, the docs
    default_interval: float  # seconds between beat ticks
    # What its runs take up (its planner reads the statuses), and the budget's unit.
    targets: Targets
    # Kernel moves by outcome verdict, applied with the outcome's recording.
    transitions: Mapping[Verdict, Transition]
    build: Callable[[HandlerContext], HandlerRuntime]
    # Per-agent batch operations: one Celery task per agent batch each.
    batches: Mapping[Operation, BatchRunner] = field(default_factory=dict)
    # Deadline and attempts: the planner reads them through it; `handlers list` shows `then`.
    give_up: GiveUp | None = None
    interval_setting: str | None = None  # Settings field overriding default_interval

    @property
    def beat_entry(self) -> str:
        return self.name.replace("_", "-")

    @property
    def operation(self) -> Operation | None:
        """The operation the handler fans out first (what its runs record)."""
        return next(iter(self.batches), None)

    def interval(self, settings: Settings) -> float:
        if self.interval_setting is None:
            return float(settings.intervals.get(self.name, self.default_interval))
        return float(getattr(settings, self.interval_setting))


def moved_of(outcomes: Sequence[ItemOutcome]) -> Moved:
    """The kernels whose declared move was applied when their outcome was recorded."""
    moved: dict[Verdict, list[KernelId]] = {}
    for o in outcomes:
        if o.moved:
            moved.setdefault(o.verdict, []).append(KernelId(uuid.UUID(o.item_id)))
    return moved


class KernelHandler(ABC):
    """Judges kernels of one scaling group; the coordinator applies the declared transitions
    to its verdicts."""

    @abstractmethod
    async def execute(
        self, scaling_group: str, kernels: Sequence[KernelInfo]
    ) -> KernelExecutionResult:
        """Judges the kernels of one scaling group."""
