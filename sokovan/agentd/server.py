"""The RPC face of a reference agent: a callosum Peer dispatching as a Backend.AI agent does."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from callosum.auth import AbstractServerAuthenticator, AuthResult, Credential, Identity
from callosum.lower.zeromq import ZeroMQAddress, ZeroMQRPCTransport
from callosum.ordering import ExitOrderedAsyncScheduler
from callosum.rpc import Peer, RPCMessage

from sokovan.agent.wire import packb, unpackb
from sokovan.agentd.agent import ReferenceAgent, normalize_id
from sokovan.agentd.faults import FaultMode
from sokovan.agentd.frames import HostileConnection, HostileFrames
from sokovan.errors import (
    AgentdError,
    AgentIdNotFoundError,
    InjectedFault,
    UnknownRPCMethod,
    WireError,
)

log = logging.getLogger(__name__)

# The methods a reference agent serves, named as a Backend.AI agent names them.
METHODS: tuple[str, ...] = (
    "ping",
    "health",
    "check_and_pull",
    "create_kernels",
    "destroy_kernel",
    "check_running",
    "create_local_network",
    "destroy_local_network",
    "assign_port",
    "release_port",
    "get_logs",
    "sokovan_control",
)

# Backend.AI spells create_kernels' parameters raw_*; a caller may use either spelling.
_ALIASES = {
    "raw_session_id": "session_id",
    "raw_kernel_ids": "kernel_ids",
    "raw_configs": "kernel_configs",
    "raw_cluster_info": "cluster_info",
}

Handler = Callable[[RPCMessage], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class _Undecodable:
    error: str


def _deserialize(data: bytes) -> Any:
    # A body that fails to decode must fail its call, not the Peer's receive loop.
    try:
        return unpackb(data)
    except WireError as e:
        return _Undecodable(str(e))


async def _unknown_method(method: str, request: RPCMessage) -> Any:
    raise UnknownRPCMethod(f"the agent serves no method {method!r}")


class AgentPeer(Peer):
    """A Peer that answers an unknown method with an error instead of dropping the link."""

    frames: HostileFrames | None = None  # replies marked by `frame` faults go out hostile

    async def __aenter__(self) -> Peer:
        await super().__aenter__()
        if self.frames is not None and self._connection is not None:
            # The send loop reads the connection for every reply: this wrapper sees them all.
            self._connection = HostileConnection(self._connection, self.frames)
        return self

    def _lookup_func(self, method: str) -> Handler:
        try:
            handler: Handler = super()._lookup_func(method)
        except KeyError:
            return functools.partial(_unknown_method, method)
        return handler


def _call_parts(body: Any) -> tuple[list[Any], dict[str, Any]]:
    if body is None:
        return [], {}
    if isinstance(body, _Undecodable):
        raise AgentdError(f"undecodable request: {body.error}")
    if not isinstance(body, Mapping):
        raise AgentdError(f"a request body is a map, got {type(body).__name__}")
    return list(body.get("args") or []), dict(body.get("kwargs") or {})


def _named_kernels(arguments: Mapping[str, Any]) -> list[str]:
    raw = [arguments["kernel_id"]] if "kernel_id" in arguments else []
    raw.extend(arguments.get("kernel_ids") or [])
    ids = []
    for item in raw:
        try:
            ids.append(normalize_id(item))
        except ValueError:
            ids.append(str(item))
    return ids


class Dispatcher:
    """Binds a call's args and kwargs to one agent method, with latency and faults."""

    def __init__(self, agent: ReferenceAgent, frames: HostileFrames | None = None) -> None:
        self.agent = agent
        self.frames = frames

    def handler(self, method: str) -> Handler:
        """The callosum handler of `method`."""
        func = getattr(self.agent, method)
        signature = inspect.signature(func)

        async def _serve(request: RPCMessage) -> Any:
            try:
                return await self._serve(method, func, signature, request)
            except AgentdError as e:
                log.warning("agent %s: %s failed: %s", self.agent.agent_id, method, e)
                raise
            except (ValueError, TypeError) as e:
                log.warning("agent %s: %s refused: %r", self.agent.agent_id, method, e)
                raise

        return _serve

    async def _serve(
        self,
        method: str,
        func: Callable[..., Any],
        signature: inspect.Signature,
        request: RPCMessage,
    ) -> Any:
        args, kwargs = _call_parts(request.body)
        agent_id = kwargs.pop("agent_id", None)
        if agent_id is not None and str(agent_id) != self.agent.agent_id:
            raise AgentIdNotFoundError(
                f"agent {agent_id!r} is not served here (this is {self.agent.agent_id!r})"
            )
        kwargs = {_ALIASES.get(k, k): v for k, v in kwargs.items()}
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as e:
            raise AgentdError(f"{method}: {e}") from e
        faults = self.agent.faults
        await faults.wait_audible()
        delay = self.agent.spec.latency.get(method, 0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        fault = faults.fault_for(method, _named_kernels(bound.arguments))
        if fault is not None:
            log.warning("agent %s: injected %s on %s", self.agent.agent_id, fault.mode, method)
            if fault.mode is FaultMode.FAIL:
                raise InjectedFault(fault.message)
            if fault.mode is FaultMode.ANSWER:
                return fault.value
            if fault.mode is FaultMode.FRAME and self.frames is not None and fault.frame:
                key = (request.peer_id, request.method, request.order_key, request.client_seq_id)
                self.frames.mark(key, fault.frame)
                return None
            await asyncio.sleep(fault.seconds)
        return await func(*bound.args, **bound.kwargs)


class CurveServerAuth(AbstractServerAuthenticator):
    """CURVE for the agent's socket: its keypair, and the client keys it admits."""

    def __init__(self, public: bytes, secret: bytes, clients: frozenset[bytes] | None) -> None:
        self._public = public
        self._secret = secret
        self._clients = clients

    async def server_identity(self) -> Identity:
        return Identity("local", self._secret)

    async def check_client(self, creds: Credential) -> AuthResult:
        if self._clients is not None and creds.public_key not in self._clients:
            log.warning("CURVE client refused: unknown public key %r", creds.public_key)
            return AuthResult(success=False)
        return AuthResult(success=True, user_id=creds.public_key.decode())

    async def server_public_key(self) -> bytes:
        return self._public


def load_curve_auth(secret_key_file: Path, client_key_files: Iterable[Path]) -> CurveServerAuth:
    """CURVE from ZeroMQ certificate files; no client files admits any CURVE client."""
    public, secret = zmq.auth.load_certificate(str(secret_key_file))
    if secret is None:
        raise AgentdError(f"{secret_key_file} holds no secret key")
    clients = frozenset(zmq.auth.load_certificate(str(p))[0] for p in client_key_files)
    return CurveServerAuth(public, secret, clients or None)


async def open_peer(
    agent: ReferenceAgent, authenticator: AbstractServerAuthenticator | None = None
) -> Peer:
    """Binds the agent's RPC socket and serves its methods; port 0 picks a free port."""
    port = agent.spec.port or "*"
    peer = AgentPeer(
        bind=ZeroMQAddress(f"tcp://{agent.spec.host}:{port}"),
        transport=ZeroMQRPCTransport,
        authenticator=authenticator,
        scheduler=ExitOrderedAsyncScheduler(),  # type: ignore[no-untyped-call]
        serializer=packb,
        deserializer=_deserialize,
    )
    peer.frames = HostileFrames()
    dispatcher = Dispatcher(agent, peer.frames)
    for method in METHODS:
        peer.handle_function(method, dispatcher.handler(method))
    await peer.__aenter__()
    if not agent.spec.port:
        transport: Any = peer._transport  # the bound socket is only reachable here
        endpoint = transport._sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        agent.spec = replace(agent.spec, port=int(endpoint.rsplit(":", 1)[1]))
    return peer
