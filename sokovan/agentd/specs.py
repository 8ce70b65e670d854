"""Agent specs from command-line words: ids, ports, latencies and sizes."""

from __future__ import annotations

from sokovan.agentd.agent import AgentSpec
from sokovan.agentd.runtime import RuntimeKind
from sokovan.agentd.server import METHODS
from sokovan.errors import ConfigError

_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_latency(text: str) -> dict[str, float]:
    """`destroy_kernel=0.005,create_kernels=0.01` -> seconds per method."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        method, sep, raw = part.partition("=")
        method = method.strip()
        if not sep or method not in METHODS:
            raise ConfigError(f"latency {part!r}: expected METHOD=SECONDS, METHOD one of {METHODS}")
        try:
            out[method] = float(raw)
        except ValueError as e:
            raise ConfigError(f"latency {part!r}: {raw!r} is not a number of seconds") from e
        if out[method] < 0:
            raise ConfigError(f"latency {part!r}: seconds must not be negative")
    return out


def parse_size(text: str) -> str:
    """`32g` -> the number of bytes as a decimal string, as Backend.AI writes `mem` slots."""
    raw = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = raw[-1] if raw and raw[-1] in _UNITS else ""
    number = raw[: len(raw) - len(unit)]
    try:
        value = float(number) * _UNITS[unit]
    except ValueError as e:
        raise ConfigError(f"size {text!r}: expected a number with an optional k/m/g/t") from e
    return str(int(value))


def build_specs(
    *,
    agent_id: str,
    port: int,
    count: int,
    base_port: int | None,
    id_prefix: str | None,
    runtime: RuntimeKind,
    host: str,
    scaling_group: str,
    cpu: str,
    mem: str,
    latency: dict[str, float],
) -> list[AgentSpec]:
    """One spec, or `count` specs named PREFIX1..PREFIXn on consecutive ports (0: any port)."""
    if count < 1:
        raise ConfigError(f"--count must be at least 1, got {count}")
    first = port if base_port is None else base_port
    if count == 1 and id_prefix is None:
        ids = [agent_id]
    else:
        prefix = "a" if id_prefix is None else id_prefix
        ids = [f"{prefix}{i}" for i in range(1, count + 1)]
    return [
        AgentSpec(
            agent_id=aid,
            port=first + i if first else 0,
            runtime=runtime,
            host=host,
            scaling_group=scaling_group,
            cpu=cpu,
            mem=parse_size(mem),
            latency=latency,
        )
        for i, aid in enumerate(ids)
    ]
