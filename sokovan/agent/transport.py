"""callosum's ZeroMQ transport with a guard on the client's receive loop.

Every reply frame is checked before callosum decodes it (`envelope.frame_problem`). A bad
frame that names a call waiting for it fails that call and is dropped. Any other bad frame
ends the receive loop on purpose, and so does anything callosum itself chokes on; either
way the guard tells the client at once, which fails the calls waiting on that connection
and makes a new one for the next call, instead of leaving them to time out.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any

import zmq
import zmq.asyncio
from callosum.abc import RawHeaderBody
from callosum.auth import AbstractServerAuthenticator
from callosum.lower import BaseTransport
from callosum.lower.zeromq import ZeroMQDealerConnector, ZeroMQRPCConnection, ZeroMQRPCTransport

from sokovan.agent.envelope import frame_problem, reply_key

log = logging.getLogger(__name__)


class FrameGuard:
    """Watches one connection's receive loop and says why it stopped."""

    def __init__(
        self,
        label: str,
        on_broken: Callable[[FrameGuard], None],
        on_bad_reply: Callable[[FrameGuard, tuple[str, int], str], bool] | None = None,
    ) -> None:
        self.label = label
        self.broken: str | None = None
        self.closing = False  # set before a deliberate close: its loop end is no fault
        self._on_broken = on_broken
        self._on_bad_reply = on_bad_reply

    def fail_one(self, frame: RawHeaderBody, problem: str) -> bool:
        """Fails the one call a bad frame answers; False if no waiting call is named."""
        key = reply_key(frame)
        if key is None or self._on_bad_reply is None:
            return False
        if not self._on_bad_reply(self, key, problem):
            return False
        log.warning("%s: malformed reply frame to %s dropped: %s", self.label, key[0], problem)
        return True

    def reject(self, problem: str) -> None:
        """Records a frame that must not reach callosum."""
        log.warning("%s: malformed reply frame, connection dropped: %s", self.label, problem)
        if self.broken is None:
            self.broken = f"malformed reply frame: {problem}"

    def ended(self) -> None:
        """The receive loop stopped: unless closing, the connection is of no further use."""
        if self.closing:
            return
        if self.broken is None:
            self.broken = "the RPC receive loop stopped on a reply it could not handle"
            log.warning("%s: %s", self.label, self.broken)
        self._on_broken(self)


class GuardedConnection(ZeroMQRPCConnection):
    """Yields only reply frames that callosum can decode safely."""

    __slots__ = ("guard",)

    def __init__(self, transport: Any, guard: FrameGuard) -> None:
        super().__init__(transport)  # type: ignore[no-untyped-call]
        self.guard = guard

    async def recv_message(self) -> AsyncGenerator[RawHeaderBody | None, None]:
        try:
            async with aclosing(super().recv_message()) as frames:
                async for frame in frames:
                    problem = None if frame is None else frame_problem(frame)
                    if problem is None:
                        yield frame
                    elif frame is None or not self.guard.fail_one(frame, problem):
                        self.guard.reject(problem)
                        return
        finally:
            self.guard.ended()


class GuardedDealerConnector(ZeroMQDealerConnector):
    """The DEALER connector, handing out a GuardedConnection."""

    def __init__(
        self, transport: Any, addr: Any, *, frame_guard: FrameGuard | None = None, **opts: Any
    ) -> None:
        super().__init__(transport, addr, **opts)
        self._frame_guard = frame_guard

    async def __aenter__(self) -> ZeroMQRPCConnection:
        connection = await super().__aenter__()
        if self._frame_guard is None:
            return connection
        return GuardedConnection(connection.transport, self._frame_guard)


# A closed client socket keeps unsent requests this long (ms), as callosum's own close does.
CLOSE_LINGER_MS = 50

_shared: tuple[int, zmq.asyncio.Context] | None = None
_shared_lock = threading.Lock()


def shared_context() -> zmq.asyncio.Context:
    """This process's ZeroMQ context for agent clients, made anew in a forked child.

    callosum gives every transport a context of its own: an I/O thread, a reaper thread and
    their descriptors per agent connection. A worker process with hundreds of agents cached
    shares one instead; a context serves any number of sockets.
    """
    global _shared
    with _shared_lock:
        if _shared is None or _shared[0] != os.getpid():
            context = zmq.asyncio.Context()
            # A context holds 1,023 sockets by default: fewer than the agents a manager may
            # keep connected. The descriptor limit of the process is the real bound.
            context.set(zmq.MAX_SOCKETS, context.get(zmq.SOCKET_LIMIT))
            _shared = (os.getpid(), context)
        return _shared[1]


class GuardedZeroMQRPCTransport(ZeroMQRPCTransport):
    """ZeroMQ RPC transport whose connections are guarded; pass `frame_guard` in its options.

    As a client (no server authenticator) it opens its socket on the process's shared
    context and closes only that socket.
    """

    connector_cls = GuardedDealerConnector

    def __init__(self, authenticator: Any = None, **kwargs: Any) -> None:
        if isinstance(authenticator, AbstractServerAuthenticator):
            super().__init__(authenticator, **kwargs)
            return
        BaseTransport.__init__(self, authenticator, **kwargs)
        self._zap_server = None
        self._zap_task = None
        self._zctx = shared_context()
        self._sock = None

    async def close(self) -> None:
        if self._zap_server is not None:
            await super().close()
        elif self._sock is not None:
            self._sock.close(linger=CLOSE_LINGER_MS)
