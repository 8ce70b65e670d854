"""Agent RPC client over callosum (ZeroMQ), wire-compatible with Backend.AI agents."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import zmq
from callosum.exceptions import AuthenticationError
from callosum.lower.zeromq import ZeroMQAddress, ZeroMQRPCTransport
from callosum.rpc import Peer, RPCInternalError, RPCUserError

from sokovan.agent import wire
from sokovan.agent.curve import CurveKeys, ManagerAuthenticator, diagnose_handshake
from sokovan.agent.reasons import lifecycle_reason
from sokovan.errors import AgentRemoteError, AgentTimeout, AgentUnavailable, WireError
from sokovan.images import image_config_to_json
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


class CallosumAgentClient:
    """One connection to one agent; every call has a timeout and maps failures to AgentError."""

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
        self._peer: Peer | None = None
        self._closed = False
        self._inflight: set[asyncio.Task[Any]] = set()
        self._cut_by_close: set[asyncio.Task[Any]] = set()

    @property
    def closed(self) -> bool:
        return self._closed

    def _make_peer(self) -> Peer:
        keepalive_interval = max(2, KEEPALIVE_IDLE_SEC // KEEPALIVE_PROBES)
        return Peer(
            connect=ZeroMQAddress(self.rpc_addr),
            transport=ZeroMQRPCTransport,
            authenticator=ManagerAuthenticator(self.curve) if self.curve else None,
            transport_opts={
                "zsock_opts": {
                    zmq.TCP_KEEPALIVE: 1,
                    zmq.TCP_KEEPALIVE_IDLE: KEEPALIVE_IDLE_SEC,
                    zmq.TCP_KEEPALIVE_INTVL: keepalive_interval,
                    zmq.TCP_KEEPALIVE_CNT: KEEPALIVE_PROBES,
                },
                "handshake_timeout": self.connect_timeout,
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
        peer = self._make_peer()
        try:
            await peer.__aenter__()
        except AuthenticationError as e:
            await _quietly_exit(peer, self.agent_id)
            reason = await diagnose_handshake(self.rpc_addr, self.curve)
            raise AgentUnavailable(
                f"agent {self.agent_id} at {self.rpc_addr}: no handshake within "
                f"{self.connect_timeout:g}s: {reason}"
            ) from e
        except (zmq.ZMQError, OSError, ValueError) as e:
            await _quietly_exit(peer, self.agent_id)
            raise AgentUnavailable(
                f"agent {self.agent_id} at {self.rpc_addr}: cannot connect: {e}"
            ) from e
        self._peer = peer

    async def close(self) -> None:
        """Fails the calls in flight, then closes the socket so the agent sees it go."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._inflight):
            self._cut_by_close.add(task)
            task.cancel()
        peer, self._peer = self._peer, None
        if peer is not None:
            await _quietly_exit(peer, self.agent_id)

    async def call(
        self, method: str, *args: Any, limit_sec: float | None = None, **kwargs: Any
    ) -> Any:
        """Invokes one agent method; failures raise AgentError subclasses."""
        peer = self._peer
        if peer is None:
            state = "closed" if self._closed else "not connected"
            raise AgentUnavailable(f"the client of agent {self.agent_id} is {state}")
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        limit = self.call_timeout if limit_sec is None else limit_sec
        try:
            async with asyncio.timeout(limit):
                reply = await peer.invoke(method, self._body(method, args, kwargs))
        except TimeoutError as e:
            raise AgentTimeout(f"agent {self.agent_id}: {method} got no reply in {limit:g}s") from e
        except asyncio.CancelledError:
            if task not in self._cut_by_close:
                raise
            task.uncancel()
            raise AgentUnavailable(
                f"agent {self.agent_id}: the connection was closed during {method}"
            ) from None
        except (RPCUserError, RPCInternalError) as e:
            raise AgentRemoteError(e.name, e.repr, method) from e
        finally:
            self._inflight.discard(task)
            self._cut_by_close.discard(task)
        if isinstance(reply, wire.Undecodable):
            raise WireError(f"agent {self.agent_id}: reply to {method}: {reply.reason}")
        return reply

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
        return {str(k): str(v) for k, v in (reply or {}).items()}

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
        return [dict(item) for item in reply or []]

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
        reply = await self.call("check_running", str(kernel_id))
        if isinstance(reply, bool) or reply is None:
            return reply
        log.warning(
            "agent %s: check_running(%s) answered %r, not a bool", self.agent_id, kernel_id, reply
        )
        return None

    async def create_local_network(self, network_name: str) -> None:
        await self.call("create_local_network", network_name)

    async def assign_port(self) -> int:
        return int(await self.call("assign_port"))


async def _quietly_exit(peer: Peer, agent_id: str) -> None:
    try:
        await peer.__aexit__(None, None, None)
    except Exception as e:  # the socket is gone either way; keep the original error
        log.warning("agent %s: closing the RPC peer failed: %s", agent_id, e)
