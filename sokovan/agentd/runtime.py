"""Kernel runtimes of the reference agent: in memory (`sim`) or one OS process each."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from enum import StrEnum
from typing import Protocol

log = logging.getLogger(__name__)

# A kernel process that ignores SIGTERM this long is killed outright.
_TERM_GRACE_SEC = 2.0
_REAP_POLL_SEC = 0.02
_PR_SET_PDEATHSIG = 1


class RuntimeKind(StrEnum):
    """Where a reference agent keeps its kernels."""

    SIM = "sim"
    PROCESS = "process"


class KernelRuntime(Protocol):
    """Starts, probes and stops the thing behind one kernel id."""

    kind: RuntimeKind

    async def start(self, kernel_id: str, environ: Mapping[str, str]) -> int | None:
        """Starts the kernel; returns its OS process id when it has one."""
        ...

    def is_running(self, kernel_id: str) -> bool:
        """Whether the kernel is alive right now."""
        ...

    async def stop(self, kernel_id: str) -> None:
        """Stops the kernel; stopping an unknown kernel does nothing."""
        ...

    async def close(self) -> None:
        """Stops every kernel."""
        ...


class SimRuntime:
    """Kernels that exist only in memory: alive until destroyed."""

    kind = RuntimeKind.SIM

    def __init__(self) -> None:
        self._alive: set[str] = set()

    async def start(self, kernel_id: str, environ: Mapping[str, str]) -> int | None:
        """Marks the kernel alive."""
        self._alive.add(kernel_id)
        return None

    def is_running(self, kernel_id: str) -> bool:
        """Whether the kernel was started and not stopped."""
        return kernel_id in self._alive

    async def stop(self, kernel_id: str) -> None:
        """Forgets the kernel."""
        self._alive.discard(kernel_id)

    async def close(self) -> None:
        """Forgets every kernel."""
        self._alive.clear()


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: a kernel must not outlive a killed agent.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def kernel_command() -> list[str]:
    """The program a process kernel runs: something that idles until killed."""
    sleep = shutil.which("sleep")
    if sleep is not None:
        return [sleep, "infinity"]
    return [sys.executable, "-c", "import time\nwhile True: time.sleep(3600)"]


class ProcessRuntime:
    """One real OS process per kernel; the process table is the truth."""

    kind = RuntimeKind.PROCESS

    def __init__(self) -> None:
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    async def start(self, kernel_id: str, environ: Mapping[str, str]) -> int | None:
        """Spawns the kernel's process with exactly `environ` (plus PATH)."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **environ}
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        proc = subprocess.Popen(  # noqa: ASYNC220 -- fork+exec returns at once
            kernel_command(),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=preexec,  # only a prctl call, safe between fork and exec
        )
        self._procs[kernel_id] = proc
        return proc.pid

    def is_running(self, kernel_id: str) -> bool:
        """Whether the kernel's process exists and has not exited (reaps it if it has)."""
        proc = self._procs.get(kernel_id)
        return proc is not None and proc.poll() is None

    def pid(self, kernel_id: str) -> int | None:
        """The process id of a kernel, if it was started here."""
        proc = self._procs.get(kernel_id)
        return None if proc is None else proc.pid

    async def stop(self, kernel_id: str) -> None:
        """Terminates and reaps the kernel's process; SIGKILL after a grace period."""
        proc = self._procs.pop(kernel_id, None)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        if await _reaped(proc, _TERM_GRACE_SEC):
            return
        log.warning("kernel %s (pid %s) ignored SIGTERM; killing it", kernel_id, proc.pid)
        proc.kill()
        await _reaped(proc, _TERM_GRACE_SEC)

    async def close(self) -> None:
        """Stops every kernel process."""
        await asyncio.gather(*(self.stop(k) for k in list(self._procs)))


async def _reaped(proc: subprocess.Popen[bytes], within: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while proc.poll() is None:
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(_REAP_POLL_SEC)
    return True


def make_runtime(kind: RuntimeKind) -> KernelRuntime:
    """A fresh runtime of the given kind."""
    if kind is RuntimeKind.PROCESS:
        return ProcessRuntime()
    return SimRuntime()
