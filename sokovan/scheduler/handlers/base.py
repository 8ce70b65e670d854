"""Abstract bases of scheduler handlers: handlers judge, the coordinator applies."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from sokovan.types import (
    KernelExecutionResult,
    KernelInfo,
    KernelStatus,
    KernelStatusTransitions,
    RunId,
    SessionInfo,
    SessionStatus,
)


class SchedulerHandler(ABC):
    """A periodic scheduler job; at most one run of it at a time."""

    # Stable public name: run ledger rows, claims and task routing use it.
    name: ClassVar[str]
    # Backend.AI's lock shared by handlers that touch the same targets; None for none.
    lock_id: ClassVar[str | None] = None

    @classmethod
    def claim_name(cls) -> str:
        """The claim that keeps runs of this handler from overlapping."""
        return cls.name


class KernelHandler(SchedulerHandler):
    """Judges kernels; the coordinator applies the declared status transitions."""

    target_kernel_statuses: ClassVar[tuple[KernelStatus, ...]]
    status_transitions: ClassVar[KernelStatusTransitions]

    @abstractmethod
    async def execute(
        self, scaling_group: str, kernels: Sequence[KernelInfo]
    ) -> KernelExecutionResult:
        """Judges the kernels of one scaling group."""


class SessionHandler(SchedulerHandler):
    """Hands sessions' agent work to the fan-out; its completion records the outcome."""

    target_session_statuses: ClassVar[tuple[SessionStatus, ...]]

    @abstractmethod
    async def execute(
        self, scaling_group: str, sessions: Sequence[SessionInfo], *, run_id: RunId
    ) -> None:
        """Starts the work for the sessions of one scaling group under run `run_id`."""
