"""Fault injection of the reference agent: one small operation language.

Operations are plain dicts, sent by the `sokovan_control` RPC method or queued in
Redis under `AGENT_CONTROL_PREFIX + agent_id`:

    {"op": "fail",   "method": M, "message": "...", "kernels": [...]}   raise InjectedFault
    {"op": "hang",   "method": M, "seconds": 5.0,   "kernels": [...]}   sleep, then serve
    {"op": "answer", "method": M, "value": None,    "kernels": [...]}   reply `value` unserved
    {"op": "frame",  "method": M, "kind": K,        "kernels": [...]}   reply a hostile frame
    {"op": "stop_presence",   "kernels": [...]}   stop refreshing presence (no kernels: all)
    {"op": "resume_presence", "kernels": [...]}   refresh again (no kernels: all)
    {"op": "silent"}                              answer nothing, refresh nothing
    {"op": "clear", "method": M}                  drop M's fault; without method: every fault
    {"op": "status"}                              no change (the RPC replies with the state)

`method` may be "*" (every method but `sokovan_control`); `kernels` is optional and
narrows a method fault to calls that name one of those kernel ids. A frame `kind` is one
of `frames.FrameKind` (a bad envelope, an undecodable or pickled body, ...).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sokovan.agentd.frames import FrameKind
from sokovan.errors import InvalidRequest

ANY_METHOD = "*"
CONTROL_METHOD = "sokovan_control"


class FaultMode(StrEnum):
    """What a method fault does to a call."""

    FAIL = "fail"
    HANG = "hang"
    ANSWER = "answer"
    FRAME = "frame"


@dataclass(frozen=True, slots=True)
class MethodFault:
    """One fault on one method, optionally narrowed to some kernels."""

    mode: FaultMode
    message: str = "injected fault"
    seconds: float = 0.0
    value: Any = None
    kernels: frozenset[str] | None = None
    frame: FrameKind | None = None

    def applies_to(self, kernel_ids: Iterable[str]) -> bool:
        """Whether a call naming `kernel_ids` is hit by this fault."""
        if self.kernels is None:
            return True
        return any(k in self.kernels for k in kernel_ids)

    def to_json(self) -> dict[str, Any]:
        """A JSON view for status replies."""
        return {
            "mode": str(self.mode),
            "message": self.message,
            "seconds": self.seconds,
            "value": self.value,
            "frame": str(self.frame) if self.frame is not None else None,
            "kernels": sorted(self.kernels) if self.kernels is not None else None,
        }


def _kernel_set(raw: Any) -> frozenset[str] | None:
    if raw is None:
        return None
    if isinstance(raw, str | bytes) or not isinstance(raw, Iterable):
        raise InvalidRequest(f"fault `kernels` must be a list of ids, got {raw!r}")
    return frozenset(str(k) for k in raw)


def _frame_kind(op: Mapping[str, Any]) -> FrameKind:
    try:
        return FrameKind(str(op.get("kind")))
    except ValueError:
        known = ", ".join(k.value for k in FrameKind)
        raise InvalidRequest(f"fault `kind` {op.get('kind')!r} is not one of {known}") from None


class Faults:
    """The faults of one agent; mutated only by `apply`."""

    def __init__(self) -> None:
        self.methods: dict[str, MethodFault] = {}
        self.presence_stopped: set[str] = set()
        self.presence_stopped_all = False
        self._audible = asyncio.Event()
        self._audible.set()

    @property
    def silent(self) -> bool:
        """Whether the agent answers nothing and refreshes nothing."""
        return not self._audible.is_set()

    async def wait_audible(self) -> None:
        """Blocks while the agent is silent."""
        await self._audible.wait()

    def fault_for(self, method: str, kernel_ids: Iterable[str]) -> MethodFault | None:
        """The fault that hits this call, if any."""
        if method == CONTROL_METHOD:
            return None
        ids = list(kernel_ids)
        for name in (method, ANY_METHOD):
            fault = self.methods.get(name)
            if fault is not None and fault.applies_to(ids):
                return fault
        return None

    def refreshes(self, kernel_id: str) -> bool:
        """Whether presence of this kernel is still refreshed."""
        return not (self.presence_stopped_all or kernel_id in self.presence_stopped)

    def apply(self, op: Mapping[str, Any]) -> None:
        """Applies one operation; raises InvalidRequest on a malformed one."""
        name = op.get("op")
        if name in (FaultMode.FAIL, FaultMode.HANG, FaultMode.ANSWER, FaultMode.FRAME):
            self._set_method_fault(FaultMode(str(name)), op)
        elif name == "stop_presence":
            self._set_presence(op, stopped=True)
        elif name == "resume_presence":
            self._set_presence(op, stopped=False)
        elif name == "silent":
            self._audible.clear()
        elif name == "clear":
            self._clear(op.get("method"))
        elif name != "status":
            raise InvalidRequest(f"unknown fault operation {name!r}")

    def _set_method_fault(self, mode: FaultMode, op: Mapping[str, Any]) -> None:
        method = op.get("method")
        if not isinstance(method, str) or not method:
            raise InvalidRequest(f"fault operation {op.get('op')!r} needs a `method`")
        try:
            seconds = float(op.get("seconds", 0.0))
        except (TypeError, ValueError) as e:
            raise InvalidRequest(f"fault `seconds` is not a number: {op.get('seconds')!r}") from e
        self.methods[method] = MethodFault(
            mode=mode,
            message=str(op.get("message") or f"injected fault in {method}"),
            seconds=seconds,
            value=op.get("value"),
            kernels=_kernel_set(op.get("kernels")),
            frame=_frame_kind(op) if mode is FaultMode.FRAME else None,
        )

    def _set_presence(self, op: Mapping[str, Any], stopped: bool) -> None:
        kernels = _kernel_set(op.get("kernels"))
        if kernels is None:
            self.presence_stopped_all = stopped
            self.presence_stopped.clear()
        elif stopped:
            self.presence_stopped |= kernels
        else:
            self.presence_stopped -= kernels

    def _clear(self, method: Any) -> None:
        if method is not None:
            self.methods.pop(str(method), None)
            return
        self.methods.clear()
        self.presence_stopped.clear()
        self.presence_stopped_all = False
        self._audible.set()

    def to_json(self) -> dict[str, Any]:
        """A JSON view of every fault in force."""
        return {
            "methods": {name: fault.to_json() for name, fault in self.methods.items()},
            "presence_stopped": sorted(self.presence_stopped),
            "presence_stopped_all": self.presence_stopped_all,
            "silent": self.silent,
        }
