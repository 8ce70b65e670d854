"""Kernel runtimes of the reference agent: in memory (`sim`) or one OS process each."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from sokovan import constants as C

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

    def logs(self, kernel_id: str, max_bytes: int) -> str:
        """The kernel's output so far (its tail, at most `max_bytes`); "" if none."""
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

    def logs(self, kernel_id: str, max_bytes: int) -> str:
        """One line: a simulated kernel prints nothing else."""
        return f"kernel {kernel_id} started (sim runtime)\n" if kernel_id in self._alive else ""

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


def kernel_command(environ: Mapping[str, str] | None = None) -> list[str]:
    """The program a process kernel runs: something that idles until killed, or with
    REFERENCE_KERNEL_LOAD=busy in its environ, a CPU loop (reclaim's busy kernels)."""
    if (environ or {}).get(C.KERNEL_LOAD_ENV) == "busy":
        return [sys.executable, "-c", "while True: pass"]
    sleep = shutil.which("sleep")
    if sleep is not None:
        return [sleep, "infinity"]
    return [sys.executable, "-c", "import time\nwhile True: time.sleep(3600)"]


class ProcessRuntime:
    """One real OS process per kernel; the process table is the truth."""

    kind = RuntimeKind.PROCESS

    def __init__(self) -> None:
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        # Each kernel's stdout and stderr go to a file here (made on first start).
        self._log_dir: Path | None = None

    def _log_path(self, kernel_id: str) -> Path:
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix="sokovan-agent-logs-"))
        return self._log_dir / f"{kernel_id}.log"

    async def start(self, kernel_id: str, environ: Mapping[str, str]) -> int | None:
        """Spawns the kernel's process with exactly `environ` (plus PATH); its output is kept."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **environ}
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        command = kernel_command(environ)
        with self._log_path(kernel_id).open("ab") as log_file:
            log_file.write(f"kernel {kernel_id} started: {shlex.join(command)}\n".encode())
            log_file.flush()
            proc = subprocess.Popen(  # noqa: ASYNC220 -- fork+exec returns at once
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=preexec,  # only a prctl call, safe between fork and exec
            )
        self._procs[kernel_id] = proc
        return proc.pid

    def logs(self, kernel_id: str, max_bytes: int) -> str:
        """The tail of the kernel process's stdout and stderr."""
        if self._log_dir is None:
            return ""
        path = self._log_path(kernel_id)
        try:
            with path.open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - max_bytes))
                return f.read(max_bytes).decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

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
        if self._log_dir is not None:
            self._log_path(kernel_id).unlink(missing_ok=True)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        if await _reaped(proc, _TERM_GRACE_SEC):
            return
        log.warning("kernel %s (pid %s) ignored SIGTERM; killing it", kernel_id, proc.pid)
        proc.kill()
        await _reaped(proc, _TERM_GRACE_SEC)

    async def close(self) -> None:
        """Stops every kernel process and removes their logs."""
        await asyncio.gather(*(self.stop(k) for k in list(self._procs)))
        if self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None


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
