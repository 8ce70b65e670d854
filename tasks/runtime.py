"""One long-lived event loop per worker process, with the services built inside it."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from celery.signals import worker_process_init, worker_process_shutdown

from sokovan.bootstrap import Services, build_services
from sokovan.config import Settings, load_settings
from tasks.canvas import CeleryFanOut, CeleryKeypairRefiller, CeleryKicker
from tasks.nodes import incarnation

log = logging.getLogger(__name__)
T = TypeVar("T")


class WorkerRuntime:
    """Runs coroutines on a loop thread so cached agent connections survive between tasks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="sokovan-loop", daemon=True
        )
        self._services: Services | None = None

    def start(self) -> None:
        self._thread.start()
        self._services = self.run(
            build_services(
                self.settings,
                CeleryFanOut(self.settings.fanout_tasks, self.settings.fanout_agents_per_task),
                CeleryKicker(),
                refiller=CeleryKeypairRefiller(),
                holder=incarnation(),
            )
        )
        log.info("worker runtime started")

    @property
    def services(self) -> Services:
        if self._services is None:
            raise RuntimeError("worker runtime not started")
        return self._services

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Runs a coroutine on the loop and waits for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        """Closes the services (every cached agent client included) and the loop."""
        if self._services is not None:
            try:
                self.run(self._services.close(), timeout=30)
            except Exception as e:
                log.warning("closing services failed: %s", e)
            self._services = None
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
        log.info("worker runtime stopped")


_runtime: WorkerRuntime | None = None
_lock = threading.Lock()


def runtime() -> WorkerRuntime:
    """This process's runtime, started on first use (solo pools have no process-init signal)."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = WorkerRuntime(load_settings())
            _runtime.start()
        return _runtime


def shutdown_runtime() -> None:
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.stop()
            _runtime = None


@worker_process_init.connect
def _start_runtime(**_: Any) -> None:
    runtime()


@worker_process_shutdown.connect
def _stop_runtime(**_: Any) -> None:
    shutdown_runtime()
