"""`--watch`: a command's table redrawn in place as it changes, until Ctrl-C (exit 0)."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable
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

    Ctrl-C ends the watch, exit 0, leaving the last table on the screen.
    """
    if interval <= 0:
        raise BadInput("--interval: must be more than 0 seconds")

    def frame() -> Text:
        body = captured(command)
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        return Text(f"Every {interval:g}s: {title}    {stamp} UTC\n\n{body}")

    first = frame()
    try:
        with Live(first, console=console(), auto_refresh=False, transient=False) as live:
            while True:
                time.sleep(interval)
                live.update(frame(), refresh=True)
    except KeyboardInterrupt:
        return
