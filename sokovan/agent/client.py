"""Agent RPC client over callosum (ZeroMQ), wire-compatible with Backend.AI agents."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import zmq
from callosum.exceptions import AuthenticationError
from callosum.lower.zeromq import ZeroMQAddress
from callosum.rpc import Peer, RPCInternalError, RPCUserError

from sokovan import constants as C
from sokovan.agent import shapes, wire
from sokovan.agent.curve import CurveKeys, ManagerAuthenticator, diagnose_handshake
from sokovan.agent.reasons import lifecycle_reason
from sokovan.agent.transport import FrameGuard, GuardedZeroMQRPCTransport
from sokovan.errors import (
    AgentError,
    AgentRemoteError,
    AgentTimeout,
    AgentUnavailable,
    WireError,
)
from sokovan.images import image_config_to_json
from sokovan.text import bounded_text
from sokovan.types import AgentId, ImageConfig, KernelId, SessionId

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 5.0
# The agent's ping and health take no agent_id keyword and fail if given one.
METHODS_WITHOUT_AGENT_ID = frozenset({"ping", "health"})
# TCP keepalive as Backend.AI's manager sets it: idle 60 s, three probes.
KEEPALIVE_IDLE_SEC = 60
KEEPALIVE_PROBES = 3
AUTO_PULL_DEFAULT = "digest"


def image_config_to_wire(config: ImageConfig) -> dict[str, Any]:
    """The ImageConfig mapping a Backend.AI agent reads in check_and_pull and kernel configs."""
    return image_config_to_json(config, AUTO_PULL_DEFAULT)


def image_ref_of(config: ImageConfig | wire.ImageRef) -> wire.ImageRef:
    """The ImageRef (ext 7) an agent expects in create_kernels for an image config."""
    if isinstance(config, wire.ImageRef):
        return config
    return wire.ImageRef.from_canonical(
        config.canonical,
        config.registry_name,
        architecture=config.architecture,
        is_local=config.is_local,
    )


Observer = Callable[[AgentError | None], None]


class CallosumAgentClient:
    """One connection to one agent; every call has a timeout and maps failures to AgentError.

    A malformed reply frame fails the call it names with a WireError; a connection whose
    receive loop stopped (see `transport`) fails every call waiting on it and is made anew
    by the next call.
    """

    def __init__(
        self,
        agent_id: AgentId,
        rpc_addr: str,
        *,
        call_timeout: float,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        curve: CurveKeys | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.rpc_addr = rpc_addr
        self.call_timeout = call_timeout
        self.connect_timeout = connect_timeout
        self.curve = curve
        # Told the outcome of every call (None: it succeeded), e.g. by the pool to count failures.
        self.observer: Observer | None = None
        self._peer: Peer | None = None
        self._guard: FrameGuard | None = None
        self._closed = False
        self._reconnecting = asyncio.Lock()
        self._inflight: dict[asyncio.Task[Any], str] = {}  # call -> its method
        self._numbered: dict[tuple[str, int], asyncio.Task[Any]] = {}  # (method, seq) -> call
        self._cut: dict[asyncio.Task[Any], AgentError] = {}  # cancelled calls -> what they raise

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def broken(self) -> str | None:
        """Why the current connection is unusable, or None."""
        return self._guard.broken if self._guard is not None else None

    def _make_peer(self, guard: FrameGuard) -> Peer:
        keepalive_interval = max(2, KEEPALIVE_IDLE_SEC // KEEPALIVE_PROBES)
        return Peer(
            connect=ZeroMQAddress(self.rpc_addr),
            transport=GuardedZeroMQRPCTransport,
            authenticator=ManagerAuthenticator(self.curve) if self.curve else None,
            transport_opts={
                "zsock_opts": {
                    zmq.TCP_KEEPALIVE: 1,
                    zmq.TCP_KEEPALIVE_IDLE: KEEPALIVE_IDLE_SEC,
                    zmq.TCP_KEEPALIVE_INTVL: keepalive_interval,
                    zmq.TCP_KEEPALIVE_CNT: KEEPALIVE_PROBES,
                },
                "handshake_timeout": self.connect_timeout,
                "frame_guard": guard,
            },
            serializer=wire.packb,
            deserializer=wire.peer_deserialize,
        )

    async def connect(self) -> None:
        """Opens the socket and completes the handshake; raises AgentUnavailable."""
        if self._closed:
            raise AgentUnavailable(f"the client of agent {self.agent_id} is closed")
        if self._peer is not None:
            return
        guard = FrameGuard(f"agent {self.agent_id}", self._connection_broke, self._bad_reply)
        peer = self._make_peer(guard)
        try:
            await peer.__aenter__()
        except AuthenticationError as e:
            await _quietly_exit(peer, guard, self.agent_id)
            reason = await diagnose_handshake(self.rpc_addr, self.curve)
            raise AgentUnavailable(
                f"agent {self.agent_id} at {self.rpc_addr}: no handshake within "
                f"{self.connect_timeout:g}s: {reason}"
            ) from e
        except (zmq.ZMQError, OSError, ValueError) as e:
            await _quietly_exit(peer, guard, self.agent_id)
            raise AgentUnavailable(
                f"agent {self.agent_id} at {self.rpc_addr}: cannot connect: {e}"
            ) from e
        if self._closed:  # closed while the handshake ran: this socket must not outlive it
            await _quietly_exit(peer, guard, self.agent_id)
            raise AgentUnavailable(f"the client of agent {self.agent_id} is closed")
        self._peer, self._guard = peer, guard

    async def close(self) -> None:
        """Fails the calls in flight, then closes the socket so the agent sees it go."""
        if self._closed:
            return
        self._closed = True
        self._cut_inflight(lambda method: f"the connection was closed during {method}", False)
        await self._drop_connection()

    async def call(
        self, method: str, *args: Any, limit_sec: float | None = None, **kwargs: Any
    ) -> Any:
        """Invokes one agent method and checks its reply's shape; failures raise AgentError."""
        try:
            reply = await self._call(method, args, kwargs, limit_sec)
        except AgentError as e:
            self._report(e)
            raise
        self._report(None)
        return reply

    async def _call(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], limit_sec: float | None
    ) -> Any:
        peer = await self._usable_peer()
        task = asyncio.current_task()
        assert task is not None
        self._inflight[task] = method
        limit = self.call_timeout if limit_sec is None else limit_sec
        body = self._body(method, args, kwargs)
        # invoke numbers the call with the peer's next sequence number before it awaits
        # anything; a bad reply frame naming that number then fails this call alone.
        key = (method, peer._client_seq_id)
        try:
            async with asyncio.timeout(limit):
                self._numbered[key] = task
                reply = await peer.invoke(method, body)
        except TimeoutError as e:
            raise AgentTimeout(f"agent {self.agent_id}: {method} got no reply in {limit:g}s") from e
        except asyncio.CancelledError:
            cut = self._cut.pop(task, None)
            if cut is not None:
                task.uncancel()
                raise cut from None
            if task.cancelling():
                raise
            # Nobody cancelled this task: the agent answered CANCELLED.
            raise AgentRemoteError("CancelledError", "the agent cancelled it", method) from None
        except (RPCUserError, RPCInternalError) as e:
            raise AgentRemoteError(e.name, e.repr, method) from e
        except Exception as e:  # anything else callosum raises on a reply is a wire problem
            raise WireError(
                f"agent {self.agent_id}: reply to {method}: {bounded_text(repr(e))}"
            ) from e
        finally:
            self._inflight.pop(task, None)
            self._cut.pop(task, None)
            if self._numbered.get(key) is task:
                del self._numbered[key]
        if isinstance(reply, wire.Undecodable):
            reason = bounded_text(reply.reason)
            raise WireError(f"agent {self.agent_id}: reply to {method}: {reason}")
        return shapes.check_reply(self.agent_id, method, reply)

    async def _usable_peer(self) -> Peer:
        """The connected peer; a broken or missing one (a failed renewal) is made anew first."""
        if self._closed:
            raise AgentUnavailable(f"the client of agent {self.agent_id} is closed")
        if self._peer is None or self.broken is not None:
            async with self._reconnecting:
                if self.broken is not None:
                    log.info("agent %s: replacing a broken connection", self.agent_id)
                    await self._drop_connection()
                await self.connect()
        assert self._peer is not None
        return self._peer

    def _connection_broke(self, guard: FrameGuard) -> None:
        if guard is not self._guard:
            return  # a connection already replaced
        reason = guard.broken

        def message(method: str) -> str:
            return f"{method} failed: {reason}; the connection is made anew for the next call"

        self._cut_inflight(message, True)

    def _bad_reply(self, guard: FrameGuard, key: tuple[str, int], problem: str) -> bool:
        task = self._numbered.get(key) if guard is self._guard else None
        if task is None or task not in self._inflight:
            return False
        text = f"agent {self.agent_id}: {key[0]} failed: malformed reply frame: {problem}"
        self._cut[task] = WireError(text)
        task.cancel()
        return True

    def _cut_inflight(self, message: Callable[[str], str], wire_fault: bool) -> None:
        for task, method in list(self._inflight.items()):
            text = f"agent {self.agent_id}: {message(method)}"
            self._cut[task] = WireError(text) if wire_fault else AgentUnavailable(text)
            task.cancel()

    async def _drop_connection(self) -> None:
        peer, guard = self._peer, self._guard
        self._peer = self._guard = None
        if peer is not None and guard is not None:
            await _quietly_exit(peer, guard, self.agent_id)

    def _report(self, error: AgentError | None) -> None:
        if self.observer is None:
            return
        try:
            self.observer(error)
        except Exception as e:  # counting must never change a call's outcome
            log.warning("agent %s: the call observer failed: %s", self.agent_id, e)

    def _body(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        body = wire.request_body(self.agent_id, list(args), kwargs)
        if method in METHODS_WITHOUT_AGENT_ID:
            del body["kwargs"]["agent_id"]
        return body

    async def ping(self, msg: str = "ping") -> str:
        """Echoes `msg` back from the agent."""
        return str(await self.call("ping", msg))

    async def health(self) -> Mapping[str, Any]:
        """The agent's health report."""
        reply = await self.call("health")
        return reply if isinstance(reply, dict) else {"status": reply}

    async def check_and_pull(self, image_configs: Mapping[str, ImageConfig]) -> Mapping[str, str]:
        configs = {name: image_config_to_wire(cfg) for name, cfg in image_configs.items()}
        reply = await self.call("check_and_pull", configs)
        return {bounded_text(k): bounded_text(v) for k, v in reply.items()}

    async def create_kernels(
        self,
        session_id: SessionId,
        kernel_ids: Sequence[KernelId],
        kernel_configs: Sequence[Mapping[str, Any]],
        cluster_info: Mapping[str, Any],
        kernel_image_refs: Mapping[KernelId, ImageConfig],
    ) -> list[dict[str, Any]]:
        # The agent indexes the refs by UUID (ext 1) and reads each as its ImageRef (ext 7).
        refs = {KernelId(k): image_ref_of(cfg) for k, cfg in kernel_image_refs.items()}
        reply = await self.call(
            "create_kernels",
            str(session_id),
            [str(k) for k in kernel_ids],
            [dict(c) for c in kernel_configs],
            dict(cluster_info),
            refs,
        )
        return [dict(item) for item in reply]

    async def destroy_kernel(
        self,
        kernel_id: KernelId,
        session_id: SessionId,
        reason: str,
        suppress_events: bool = False,
    ) -> None:
        # A real agent waits on an unknown reason instead of refusing it: send only valid ones.
        await self.call(
            "destroy_kernel",
            str(kernel_id),
            str(session_id),
            lifecycle_reason(reason),
            suppress_events=suppress_events,
        )

    async def check_running(self, kernel_id: KernelId) -> bool | None:
        running: bool | None = await self.call("check_running", str(kernel_id))
        return running

    async def create_local_network(self, network_name: str) -> None:
        await self.call("create_local_network", network_name)

    async def assign_port(self) -> int:
        port: int = await self.call("assign_port")
        return port

    async def get_logs(self, kernel_id: KernelId) -> str:
        """`get_logs(kernel_id)` replies `{"logs": str}`; the tail of at most
        KERNEL_LOGS_MAX_BYTES is kept (an agent sends the whole container log)."""
        reply = await self.call("get_logs", str(kernel_id))
        return tail_text(reply["logs"], C.KERNEL_LOGS_MAX_BYTES)


def tail_text(text: str, max_bytes: int) -> str:
    """The end of `text` in at most `max_bytes` UTF-8 bytes, cut at a line start if one is near."""
    data = text.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return text
    cut = data[-max_bytes:]
    newline = cut.find(b"\n")
    if 0 <= newline < 4096:
        cut = cut[newline + 1 :]
    return cut.decode("utf-8", "ignore")


async def _quietly_exit(peer: Peer, guard: FrameGuard, agent_id: str) -> None:
    guard.closing = True
    try:
        await peer.__aexit__(None, None, None)
    except Exception as e:  # the socket is gone either way; keep the original error
        log.warning("agent %s: closing the RPC peer failed: %s", agent_id, e)
