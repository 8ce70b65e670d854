"""A HandlerContext over a given repository, with a stub for every adapter not given."""

from __future__ import annotations

from typing import Any

from sokovan.stubs.agents import FakeAgentClientPool
from sokovan.stubs.fanout import RefusingFanOut
from sokovan.stubs.presence import FakePresence
from sokovan.stubs.secrets import FakeSecretStore


def stub_context(repository: Any, **adapters: Any) -> Any:
    """A HandlerContext over `repository` with a stub for every adapter not given."""
    from sokovan.config import Settings
    from sokovan.scheduler.handlers.base import HandlerContext
    from sokovan.scheduler.terminator import SessionTerminator

    pool = adapters.pop("pool", None) or FakeAgentClientPool()
    fanout = adapters.pop("fanout", None) or RefusingFanOut("this test dispatches nothing")
    presence = adapters.pop("presence", None) or FakePresence()
    return HandlerContext(
        settings=adapters.pop("settings", None) or Settings(),
        repository=repository,
        terminator=adapters.pop("terminator", None) or SessionTerminator(pool, presence, fanout),
        pool=pool,
        secrets=adapters.pop("secrets", None) or FakeSecretStore(),
        fanout=fanout,
        **adapters,
    )
