"""CURVE authentication of the agent RPC, as Backend.AI sets it up (ZAP domain "local")."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.asyncio
import zmq.auth
from callosum.auth import AbstractClientAuthenticator, Identity
from zmq.utils.monitor import recv_monitor_message

from sokovan.errors import ConfigError

ZAP_DOMAIN = "local"


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """The manager's keypair and the agent's public key (Z85-encoded bytes)."""

    manager_public: bytes
    manager_secret: bytes
    agent_public: bytes


class ManagerAuthenticator(AbstractClientAuthenticator):
    """Presents the manager's certificate and pins the agent's public key."""

    def __init__(self, keys: CurveKeys, domain: str = ZAP_DOMAIN) -> None:
        self._keys = keys
        self._domain = domain

    async def server_public_key(self) -> bytes:
        return self._keys.agent_public

    async def client_public_key(self) -> bytes:
        return self._keys.manager_public

    async def client_identity(self) -> Identity:
        return Identity(self._domain, self._keys.manager_secret)


def load_manager_cert(path: Path) -> tuple[bytes, bytes]:
    """Reads a ZeroMQ certificate file holding both the public and the secret key."""
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the manager certificate {path}: {e}") from e
    if not secret:
        raise ConfigError(f"the manager certificate {path} has no secret key")
    return bytes(public), bytes(secret)


def load_public_key(path: Path) -> bytes:
    """Reads the public key of a ZeroMQ certificate file."""
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the agent public key {path}: {e}") from e
    return bytes(public)


def agent_key_path(configured: Path, agent_id: str) -> Path:
    """One key file for every agent, or `<folder>/<agent_id>.key` when given a folder."""
    if configured.is_dir():
        return configured / f"{agent_id}.key"
    return configured


def create_curve_certificates(folder: Path, agent_ids: list[str]) -> dict[str, str]:
    """The manager's and each agent's certificates; returns the settings that use them."""
    agents = folder / "agents"
    agents.mkdir(parents=True, exist_ok=True)
    zmq.auth.create_certificates(str(folder), "manager")
    for agent_id in agent_ids:
        zmq.auth.create_certificates(str(agents), agent_id)
    for secret in folder.rglob("*.key_secret"):
        secret.chmod(0o600)
    root = folder.resolve()
    return {
        "SOKOVAN_CURVE_MANAGER_CERT": str(root / "manager.key_secret"),
        "SOKOVAN_CURVE_AGENT_PUBLIC_KEY": str(root / "agents"),
        "SOKOVAN_CURVE_AGENT_CERT": str(root / "agents"),
    }


_AUTH_EVENTS: dict[int, str] = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "CURVE authentication was refused (wrong keys)",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: (
        "the security handshake failed (CURVE keys missing on one side, or wrong agent key)"
    ),
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the security handshake failed",
}


async def diagnose_handshake(addr: str, keys: CurveKeys | None, wait: float = 1.0) -> str:
    """Connects once more with a monitored socket and says why a handshake fails."""
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    monitor = sock.get_monitor_socket()
    verdict = "nothing answers at that address"
    try:
        if keys is not None:
            sock.curve_serverkey = keys.agent_public
            sock.curve_publickey = keys.manager_public
            sock.curve_secretkey = keys.manager_secret
            sock.zap_domain = ZAP_DOMAIN.encode()
        sock.connect(addr)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                while True:
                    event = int((await recv_monitor_message(monitor))["event"])
                    if event in _AUTH_EVENTS:
                        return _AUTH_EVENTS[event]
                    if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                        return "the handshake succeeds now (the agent was slow or restarting)"
                    if event == zmq.EVENT_CONNECTED:
                        verdict = "connected, but the agent never answered the handshake"
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
        ctx.term()
    return verdict
