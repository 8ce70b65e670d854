"""`sokovan up`'s process supervisor: honcho's processes and output, with a restart policy.

honcho stops everything when any one process exits. A Celery worker or beat can exit on its
own (an OOM kill, an error Celery deems unrecoverable, as a broker dying under it was, see
tasks/consumer.py), and under honcho that one exit would take the whole cluster down. Processes
named in `restart` are started again instead, as systemd's `Restart=always` does, unless they
exit too often (a bad setting, a missing module): then everything stops, as honcho would.
Any other exit, SIGINT or SIGTERM stops every process: SIGTERM to each process group, SIGKILL
to what is left after a grace period.
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
import sys
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from honcho.colour import get_colours
from honcho.compat import ProcessManager
from honcho.printer import Message, Printer
from honcho.process import Process

# A pause before a restart, so a process that fails at once does not spin a core.
RESTART_DELAY_SEC: Final = 1.0
# More restarts of one process than this within RESTART_WINDOW_SEC: it cannot run; stop all.
RESTART_BURST: Final = 5
RESTART_WINDOW_SEC: Final = 60.0
# What a process gets between SIGTERM and SIGKILL when everything stops (as honcho gives).
KILL_WAIT_SEC: Final = 5.0
SYSTEM: Final = "system"


@dataclass
class _Child:
    """One supervised command, its current incarnation and its restart times."""

    process: Process
    restartable: bool
    runner: Any = None  # the multiprocessing.Process that runs it and relays its output
    pid: int | None = None
    returncode: int | None = None  # set only when it stays stopped
    due: float | None = None  # monotonic time of a pending restart
    restarts: deque[float] = field(default_factory=deque)


class Supervisor:
    """Runs commands with prefixed output until one stops for good or a signal arrives."""

    def __init__(
        self,
        commands: Mapping[str, str],
        restart: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        printer: Printer | None = None,
    ) -> None:
        self.returncode: int | None = None
        self.restarted: list[str] = []  # "name (rc=N)" for every restart, in order
        self._events: Any = multiprocessing.Queue()
        self._printer = printer or Printer(sys.stdout)
        self._printer.width = max(len(SYSTEM), *(len(n) for n in commands))
        self._procmgr = ProcessManager()
        self._signalled: int | None = None
        self._stopping_since: float | None = None
        self._killed = False
        colours = get_colours()
        keep = set(restart)
        self._children = {
            name: _Child(
                Process(cmd, name=name, colour=next(colours), env=_copy(env)), name in keep
            )
            for name, cmd in commands.items()
        }

    def loop(self) -> int:
        """Starts every command and supervises them; returns the exit code for `sokovan up`."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        for name in self._children:
            self._run(name)
        while True:
            try:
                message = self._events.get(timeout=0.1)
            except queue.Empty:
                message = None
            if message is not None:
                self._handle(message)
            self._start_due()
            if self._signalled is not None and self._stopping_since is None:
                self._say(f"{signal.Signals(self._signalled).name} received")
                self.returncode = 128 + self._signalled
                self._stop_all()
            if self._stopping_since is None and self._any_stopped():
                self._stop_all()
            if self._stopping_since is not None:
                if message is None and self._all_stopped():
                    return self.returncode or 0
                if not self._killed and time.monotonic() - self._stopping_since > KILL_WAIT_SEC:
                    self._killed = True
                    self._signal_all(force=True)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signalled = signum

    def _run(self, name: str) -> None:
        child = self._children[name]
        child.due = None
        child.runner = multiprocessing.Process(
            name=name, target=child.process.run, args=(self._events, True)
        )
        child.runner.start()

    def _handle(self, message: Message) -> None:
        child = self._children.get(message.name) if message.name else None
        if message.type == "line" or child is None:
            self._printer.write(message)
        elif message.type == "start":
            child.pid = message.data["pid"]
            self._say(f"{message.name} started (pid={child.pid})")
            if self._stopping_since is not None:  # a restart that raced the stop
                self._procmgr.terminate(child.pid)
        elif message.type == "stop":
            self._stopped(message.name, child, int(message.data["returncode"]))

    def _stopped(self, name: str, child: _Child, rc: int) -> None:
        child.runner.join()
        now = time.monotonic()
        while child.restarts and now - child.restarts[0] > RESTART_WINDOW_SEC:
            child.restarts.popleft()
        if (
            child.restartable
            and self._stopping_since is None
            and len(child.restarts) < RESTART_BURST
        ):
            child.restarts.append(now)
            child.due = now + RESTART_DELAY_SEC
            self.restarted.append(f"{name} (rc={rc})")
            self._say(
                f"{name} exited on its own (rc={rc}); starting it again "
                f"({len(child.restarts)} of at most {RESTART_BURST} in {RESTART_WINDOW_SEC:g} s)"
            )
            return
        if child.restartable and self._stopping_since is None:
            self._say(f"{name} exited {RESTART_BURST + 1} times in {RESTART_WINDOW_SEC:g} s")
        child.returncode = rc
        self._say(f"{name} stopped (rc={rc})")
        if self.returncode is None:
            self.returncode = rc

    def _start_due(self) -> None:
        now = time.monotonic()
        for name, child in self._children.items():
            if child.due is not None and now >= child.due:
                self._run(name)

    def _stop_all(self) -> None:
        self._stopping_since = time.monotonic()
        for child in self._children.values():
            if child.due is not None:  # waiting for its restart: it stays stopped
                child.due = None
                child.returncode = child.returncode or 0
        self._signal_all(force=False)

    def _signal_all(self, force: bool) -> None:
        for name, child in self._children.items():
            if child.returncode is not None or child.pid is None:
                continue
            self._say(f"sending {'SIGKILL' if force else 'SIGTERM'} to {name} (pid {child.pid})")
            if force:
                self._procmgr.kill(child.pid)
            else:
                self._procmgr.terminate(child.pid)

    def _any_stopped(self) -> bool:
        return any(c.returncode is not None for c in self._children.values())

    def _all_stopped(self) -> bool:
        return all(c.returncode is not None for c in self._children.values())

    def _say(self, text: str) -> None:
        self._printer.write(Message("line", text + "\n", datetime.now().astimezone(), SYSTEM, None))


def _copy(env: Mapping[str, str] | None) -> dict[str, str] | None:
    """The environment for one command (None: ours), a copy each so none sees another's."""
    return None if env is None else dict(env)
