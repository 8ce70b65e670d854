"""One reference agent: the RPC methods of a Backend.AI agent over a kernel runtime."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sokovan import __version__
from sokovan import constants as C
from sokovan.agentd.faults import Faults
from sokovan.agentd.runtime import KernelRuntime, RuntimeKind
from sokovan.errors import AgentdError

log = logging.getLogger(__name__)

# Host ports handed out for kernels and assign_port; nothing listens on them in `sim`.
_PORT_RANGE = range(10000, 65536)


class PresenceWriter(Protocol):
    """The part of the presence store an agent writes."""

    async def write_presence(self, kernel_ids: Iterable[str], alive: bool = True) -> None: ...

    async def remove_presence(self, kernel_ids: Iterable[str]) -> None: ...


@dataclass(frozen=True)
class AgentSpec:
    """What one reference agent is: id, address, runtime, capacity and latencies."""

    agent_id: str
    port: int
    runtime: RuntimeKind = RuntimeKind.SIM
    host: str = "127.0.0.1"
    scaling_group: str = "default"
    cpu: str = "8"
    mem: str = str(32 * 2**30)
    latency: Mapping[str, float] = field(default_factory=dict)


@dataclass
class Kernel:
    """A kernel this agent created."""

    kernel_id: str
    session_id: str
    image: str
    info: dict[str, Any]
    ports: list[int]
    pid: int | None


def normalize_id(raw: Any) -> str:
    """A kernel or session id as the canonical UUID string; raises ValueError if it is none."""
    if isinstance(raw, uuid.UUID):
        return str(raw)
    if isinstance(raw, bytes):
        raw = raw.decode()
    return str(uuid.UUID(str(raw)))


class PortPool:
    """Host ports of one agent: released ports first, then fresh ones."""

    def __init__(self) -> None:
        self._next = _PORT_RANGE.start
        self._free: list[int] = []

    def acquire(self) -> int:
        """One port; raises AgentdError when the range is used up."""
        if self._free:
            return self._free.pop()
        if self._next >= _PORT_RANGE.stop:
            raise AgentdError("port pool exhausted")
        self._next += 1
        return self._next - 1

    def release(self, port: int) -> None:
        """Returns a port to the pool."""
        self._free.append(port)


def _image_of(config: Mapping[str, Any]) -> str:
    image = config.get("image")
    if isinstance(image, Mapping):
        return str(image.get("canonical") or image.get("name") or "unknown")
    return str(image) if isinstance(image, str) else "unknown"


class ReferenceAgent:
    """Serves the agent RPC for one agent id over one runtime."""

    def __init__(
        self,
        spec: AgentSpec,
        runtime: KernelRuntime,
        presence: PresenceWriter,
        started_at: float | None = None,
    ) -> None:
        self.spec = spec
        self.runtime = runtime
        self.faults = Faults()
        self.kernels: dict[str, Kernel] = {}
        self.networks: set[str] = set()
        self.images: set[str] = set()
        self.ports = PortPool()
        self._presence = presence
        # A new marker every start: a restarted agent is told apart from the one that was.
        self.instance_id = uuid.uuid4().hex
        # When this instance started, on the presence store's clock (which stamps presence):
        # a kernel whose last presence is older was vouched for by an earlier instance only.
        self.started_at = time.time() if started_at is None else started_at

    @property
    def agent_id(self) -> str:
        return self.spec.agent_id

    @property
    def rpc_addr(self) -> str:
        return f"tcp://{self.spec.host}:{self.spec.port}"

    async def ping(self, msg: Any) -> Any:
        """Echoes `msg`."""
        return msg

    async def health(self) -> dict[str, Any]:
        """A health report in the shape of Backend.AI's, plus this agent's counts."""
        running = sum(1 for k in self.kernels if self.runtime.is_running(k))
        return {
            "status": "ok",
            "version": __version__,
            "component": "agent",
            "agent_id": self.agent_id,
            "instance_id": self.instance_id,
            "started_at": self.started_at,
            "runtime": str(self.runtime.kind),
            "kernels": len(self.kernels),
            "running": running,
        }

    async def check_and_pull(self, image_configs: Mapping[str, Any]) -> dict[str, str]:
        """Marks every image present; returns one background task id per image."""
        if not isinstance(image_configs, Mapping):
            raise AgentdError(f"image_configs must be a map, got {type(image_configs).__name__}")
        self.images.update(str(name) for name in image_configs)
        return {str(name): str(uuid.uuid4()) for name in image_configs}

    async def create_kernels(
        self,
        session_id: Any,
        kernel_ids: Sequence[Any],
        kernel_configs: Sequence[Mapping[str, Any]],
        cluster_info: Mapping[str, Any] | None = None,
        kernel_image_refs: Any = None,
    ) -> list[dict[str, Any]]:
        """Creates kernels; a kernel id that already exists answers with its existing info."""
        sid = normalize_id(session_id)
        if len(kernel_ids) != len(kernel_configs):
            raise AgentdError(
                f"{len(kernel_ids)} kernel ids but {len(kernel_configs)} kernel configs"
            )
        results: list[dict[str, Any]] = []
        fresh: list[str] = []
        for raw_id, config in zip(kernel_ids, kernel_configs, strict=True):
            kid = normalize_id(raw_id)
            existing = self.kernels.get(kid)
            if existing is None:
                existing = await self._create_one(sid, kid, config)
                fresh.append(kid)
            results.append(dict(existing.info))
        live = [k for k in fresh if self.faults.refreshes(k) and not self.faults.silent]
        if live:
            await self._presence.write_presence(live)
        return results

    async def _create_one(self, sid: str, kid: str, config: Mapping[str, Any]) -> Kernel:
        image = _image_of(config)
        environ = {str(k): str(v) for k, v in (config.get("environ") or {}).items()}
        environ.setdefault("BACKENDAI_KERNEL_ID", kid)
        environ.setdefault("BACKENDAI_SESSION_ID", sid)
        environ.setdefault("BACKENDAI_KERNEL_IMAGE", image)
        ports = [self.ports.acquire() for _ in range(3)]
        pid = await self.runtime.start(kid, environ)
        info = {
            "id": kid,
            "kernel_host": self.spec.host,
            "repl_in_port": ports[0],
            "repl_out_port": ports[1],
            "stdin_port": 0,
            "stdout_port": 0,
            "service_ports": [
                {
                    "name": "sshd",
                    "protocol": "tcp",
                    "container_ports": [2200],
                    "host_ports": [ports[2]],
                    "is_inference": False,
                }
            ],
            "container_id": uuid.uuid5(uuid.NAMESPACE_OID, f"{self.agent_id}/{kid}").hex * 2,
            "resource_spec": {
                "slots": config.get("resource_slots") or {},
                "mounts": [],
                "scratch_disk_size": 0,
            },
            "attached_devices": {},
            "agent_addr": self.rpc_addr,
            "scaling_group": self.spec.scaling_group,
        }
        kernel = Kernel(kid, sid, image, info, ports, pid)
        self.kernels[kid] = kernel
        log.info("agent %s created kernel %s (session %s, pid %s)", self.agent_id, kid, sid, pid)
        return kernel

    async def destroy_kernel(
        self,
        kernel_id: Any,
        session_id: Any = None,
        reason: Any = None,
        suppress_events: bool = False,
    ) -> None:
        """Stops and forgets a kernel; an unknown kernel is already destroyed."""
        kid = normalize_id(kernel_id)
        kernel = self.kernels.pop(kid, None)
        if kernel is None:
            log.info("agent %s: destroy of unknown kernel %s succeeds", self.agent_id, kid)
        else:
            await self.runtime.stop(kid)
            for port in kernel.ports:
                self.ports.release(port)
            log.info("agent %s destroyed kernel %s (reason %r)", self.agent_id, kid, reason)
        await self._presence.remove_presence([kid])

    async def check_running(self, kernel_id: Any) -> bool:
        """Whether the kernel exists here and is alive."""
        kid = normalize_id(kernel_id)
        return kid in self.kernels and self.runtime.is_running(kid)

    async def create_local_network(self, network_name: str) -> None:
        """Records a local network; creating it again is harmless."""
        self.networks.add(str(network_name))

    async def destroy_local_network(self, network_name: str) -> None:
        """Forgets a local network; an unknown one is already gone."""
        self.networks.discard(str(network_name))

    async def assign_port(self) -> int:
        """One free host port."""
        return self.ports.acquire()

    async def get_logs(self, kernel_id: Any) -> dict[str, str]:
        """The kernel's output as a Backend.AI agent replies it: `{"logs": str}` (its tail)."""
        kid = normalize_id(kernel_id)
        if kid not in self.kernels:
            raise AgentdError(f"no kernel {kid} on agent {self.agent_id}")
        return {"logs": self.runtime.logs(kid, C.KERNEL_LOGS_MAX_BYTES)}

    async def release_port(self, port_no: int) -> None:
        """Returns a host port."""
        self.ports.release(int(port_no))

    async def sokovan_control(self, op: Mapping[str, Any]) -> dict[str, Any]:
        """Applies a fault operation (see sokovan.agentd.faults); replies with the state."""
        if not isinstance(op, Mapping):
            raise AgentdError(f"sokovan_control takes a map, got {type(op).__name__}")
        self.faults.apply(op)
        log.warning("agent %s: fault operation %s applied", self.agent_id, dict(op))
        return self.status()

    def status(self) -> dict[str, Any]:
        """Faults in force and every kernel with its process id and liveness."""
        return {
            "agent_id": self.agent_id,
            "faults": self.faults.to_json(),
            "kernels": {
                kid: {
                    "session_id": k.session_id,
                    "pid": k.pid,
                    "running": self.runtime.is_running(kid),
                }
                for kid, k in self.kernels.items()
            },
            "networks": sorted(self.networks),
        }

    def kernel_pids(self) -> dict[str, int]:
        """Process ids of the kernels that run as OS processes (their statistics are written)."""
        if self.faults.silent:
            return {}
        return {
            kid: k.pid
            for kid, k in self.kernels.items()
            if k.pid is not None and self.runtime.is_running(kid)
        }

    def presence_due(self) -> list[str]:
        """Kernels whose presence should be refreshed now."""
        if self.faults.silent:
            return []
        return [
            kid
            for kid in self.kernels
            if self.faults.refreshes(kid) and self.runtime.is_running(kid)
        ]

    def registration(self) -> dict[str, Any]:
        """The registry entry of this agent."""
        return {
            "id": self.agent_id,
            "instance_id": self.instance_id,
            "started_at": self.started_at,
            "rpc_addr": self.rpc_addr,
            "scaling_group": self.spec.scaling_group,
            "capacity": {"cpu": self.spec.cpu, "mem": self.spec.mem},
            "runtime": str(self.runtime.kind),
            "heartbeat": int(time.time()),
            "pid": os.getpid(),
        }

    async def close(self) -> None:
        """Stops every kernel; their presence goes with them."""
        ids = list(self.kernels)
        await self.runtime.close()
        self.kernels.clear()
        if ids:
            await self._presence.remove_presence(ids)
