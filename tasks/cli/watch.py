"""`--watch`: a command's table redrawn in place as it changes, until Ctrl-C (exit 0)."""

from __future__ import annotations

import contextlib
import io
import signal
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import typer
from rich.live import Live
from rich.text import Text

from tasks.cli.common import console
from tasks.cli.errors import BadInput

# How often a watched table is read again: live enough, light on the database.
WATCH_INTERVAL_SEC = 1.0
WatchOption = typer.Option(
    False, "--watch", "-w", help="Redraw as it changes, until Ctrl-C (exit 0)."
)
IntervalOption = typer.Option(
    WATCH_INTERVAL_SEC, help="With --watch: seconds between reads.", min=0.1, max=3600
)


def captured(command: Callable[[], None]) -> str:
    """What `command` prints to stdout, as text."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        command()
    return out.getvalue().rstrip("\n")


def watch_command(title: str, as_json: bool, interval: float, draw: Callable[[], None]) -> None:
    """A list command's --watch: refuses --json, then redraws `draw`'s table until Ctrl-C."""
    if as_json:
        raise BadInput("--watch draws a table; leave out --json")
    watch(title, draw, interval)


def watch(title: str, command: Callable[[], None], interval: float = WATCH_INTERVAL_SEC) -> None:
    """Redraws `command`'s output in place every `interval` seconds, as `watch(1)` does.

    Ctrl-C ends the watch, exit 0, leaving the last table on the screen. It is taken as a
    flag the loop reads, not as KeyboardInterrupt: an interrupt raised inside a finalizer that
    the garbage collector runs while a table is read is ignored by Python, and the watch
    would go on.
    """
    if interval <= 0:
        raise BadInput("--interval: must be more than 0 seconds")

    def frame() -> Text:
        body = captured(command)
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        return Text(f"Every {interval:g}s: {title}    {stamp} UTC\n\n{body}")

    with _interrupts() as stop:
        first = frame()
        with Live(first, console=console(), auto_refresh=False, transient=False) as live:
            while not stop.wait(interval):
                live.update(frame(), refresh=True)


@contextlib.contextmanager
def _interrupts() -> Iterator[threading.Event]:
    """An event set by Ctrl-C (SIGINT) while inside; off the main thread, where no handler can
    be set, KeyboardInterrupt ends the watch as well."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        with contextlib.suppress(KeyboardInterrupt):
            yield stop
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    try:
        yield stop
    except KeyboardInterrupt:  # one that came before the handler was set
        return
    finally:
        signal.signal(signal.SIGINT, previous)
