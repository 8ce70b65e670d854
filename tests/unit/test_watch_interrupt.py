"""SC-OP-006: Ctrl-C ends a `--watch` at once with exit 0, even when it lands in a finalizer,
where Python ignores a KeyboardInterrupt."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest

from tasks.cli.watch import watch

pytestmark = pytest.mark.timeout(30)


class _InterruptsOnDelete:
    """Sends this process Ctrl-C from its finalizer: the interrupt is raised inside __del__."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)


def _drawing_until(
    interrupt_at: int, draws: list[int], interrupt: Callable[[], object]
) -> Callable[[], None]:
    def draw() -> None:
        draws.append(len(draws) + 1)
        if len(draws) == interrupt_at:
            interrupt()
        if len(draws) > interrupt_at + 2:
            raise AssertionError("the watch went on after Ctrl-C")
        print(f"frame {len(draws)}")

    return draw


def test_ctrl_c_between_frames_ends_the_watch() -> None:
    draws: list[int] = []
    before = signal.getsignal(signal.SIGINT)

    watch("test", _drawing_until(3, draws, lambda: os.kill(os.getpid(), signal.SIGINT)), 0.01)

    assert draws == [1, 2, 3]
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_inside_a_finalizer_still_ends_the_watch() -> None:
    """The interrupt lands while the garbage collector runs a finalizer during a frame: as
    KeyboardInterrupt it would be printed as ignored and the watch would go on."""
    draws: list[int] = []

    def interrupt_in_finalizer() -> None:
        _InterruptsOnDelete()  # dropped at once: its __del__ runs here

    watch("test", _drawing_until(2, draws, interrupt_in_finalizer), 0.01)

    assert draws == [1, 2]
