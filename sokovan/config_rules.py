"""The ranges and shapes every setting must have; a value outside them is a ConfigError.

Each rule names the variable, so `bad setting: SOKOVAN_X=...` tells the operator what to fix.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from sokovan.errors import ConfigError


class _Checked(Protocol):
    """What the checks read of the settings (sokovan.config.Settings)."""

    @property
    def agent_ports(self) -> tuple[int, ...]: ...
    @property
    def log_level(self) -> str: ...
    @property
    def redis_url(self) -> str: ...
    @property
    def presence_url(self) -> str: ...
    @property
    def database_url(self) -> str: ...


PREFIX = "SOKOVAN_"
MINUTE, HOUR, DAY = 60, 3600, 86400
# Schemes redis-py and kombu both take for the broker and the presence store.
REDIS_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class Range:
    """Allowed values: above `low` (or at it, unless `open_low`), at most `high`."""

    low: float
    high: float
    open_low: bool = False

    def allows(self, value: float) -> bool:
        if math.isnan(value):
            return False
        above = value > self.low if self.open_low else value >= self.low
        return above and value <= self.high

    def text(self) -> str:
        low = f"above {self.low:g}" if self.open_low else f"at least {self.low:g}"
        return f"{low} and at most {self.high:g}"


PORT = Range(1, 65535)
# An interval or deadline in seconds: more than nothing, at most a week.
SECONDS = Range(0, 7 * DAY, open_low=True)
# A pause that may be none at all.
PAUSE = Range(0, 7 * DAY)
COUNT = Range(1, 1_000_000)

RANGES: dict[str, Range] = {
    "embedded_valkey_port": PORT,
    "flower_port": PORT,
    "metrics_port": PORT,
    "agent_base_port": PORT,
    "sweep_interval": SECONDS,
    "terminate_interval": SECONDS,
    "launch_interval": SECONDS,
    "recover_interval": SECONDS,
    "prune_interval": SECONDS,
    "keypair_refill_interval": SECONDS,
    "terminating_deadline": SECONDS,
    "pulling_deadline": SECONDS,
    "creating_deadline": SECONDS,
    "pull_attempts": Range(1, 100),
    "retry_backoff": PAUSE,
    "retry_backoff_max": PAUSE,
    "presence_db": Range(0, 1023),
    "presence_stale_after": SECONDS,
    # Below the 600 s gap after which a real agent takes a kernel for an orphan, with room
    # for a sweep interval.
    "presence_check_refresh": Range(0, 300),
    "presence_ttl": Range(1, 7 * DAY),
    "presence_refresh": SECONDS,
    "kernel_stats_interval": SECONDS,
    "sweep_max_stale_ratio": Range(0, 1),
    "sweep_brake_reap_share": Range(0, 1),
    "sweep_brake_min_kernels": Range(0, 1_000_000_000),
    "agent_call_timeout": Range(0, DAY, open_low=True),
    "start_session_timeout": Range(0, DAY, open_low=True),
    "destroy_concurrency": Range(1, 100_000),
    "check_running_concurrency": Range(1, 100_000),
    "task_soft_time_limit": Range(1, 7 * DAY),
    "task_time_limit": Range(1, 7 * DAY),
    "visibility_timeout": Range(1, 30 * DAY),
    "result_expires": Range(1, 365 * DAY),
    "soft_shutdown_timeout": Range(0, DAY),
    "max_deliveries": Range(1, 1000),
    "claim_lifetime": Range(1, DAY),
    "run_deadline": Range(1, 7 * DAY),
    "run_retention_days": Range(0, 36_500),
    "max_kernels_per_session": Range(1, 10_000),
    "fanout_tasks": Range(1, 100_000),
    "fanout_agents_per_task": Range(1, 100_000),
    "agent_pool_size": COUNT,
    "agent_failure_threshold": Range(1, 10_000),
    "agent_recovery": SECONDS,
    "agent_ping_interval": SECONDS,
    "agent_ping_timeout": Range(0, DAY, open_low=True),
    "agent_unreachable_after": SECONDS,
    "agent_lost_after": SECONDS,
    "agent_lost_grace": PAUSE,
    "keypair_pool_size": Range(0, 10_000),
}
# Mapping settings: the range of every value.
MAPPING_RANGES: dict[str, Range] = {
    "intervals": SECONDS,
    "budgets": Range(0, 1_000_000_000),
}
# Whichever of a pair is read first must not exceed the second.
ORDERED = (("retry_backoff", "retry_backoff_max"),)
NOT_EMPTY = ("flower_host", "metrics_host", "flower_user", "keypair_type")


def var(name: str) -> str:
    """The environment variable of setting `name`."""
    return PREFIX + name.upper()


def _bad(name: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"{var(name)}={value!r} is out of range: {why}")


def check_ranges(s: _Checked) -> None:
    """Raises ConfigError naming the first setting outside its range or shape."""
    for name, allowed in RANGES.items():
        value = getattr(s, name)
        if not allowed.allows(value):
            raise _bad(name, value, f"must be {allowed.text()}")
    for name, allowed in MAPPING_RANGES.items():
        mapping: Mapping[str, float] = getattr(s, name)
        for key, value in mapping.items():
            if not allowed.allows(value):
                raise _bad(name, f"{key}={value}", f"each value must be {allowed.text()}")
    for port in s.agent_ports:
        if not PORT.allows(port):
            raise _bad("agent_ports", port, f"each port must be {PORT.text()}")
    for first, second in ORDERED:
        if getattr(s, first) > getattr(s, second):
            raise _bad(first, getattr(s, first), f"must not exceed {var(second)}")
    for name in NOT_EMPTY:
        if not str(getattr(s, name)).strip():
            raise ConfigError(f"{var(name)} is empty")
    if s.log_level.upper() not in logging.getLevelNamesMapping():
        raise _bad("log_level", s.log_level, "expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    check_redis_url("redis_url", s.redis_url)
    if s.presence_url:
        check_redis_url("presence_url", s.presence_url)
    if s.database_url:
        check_database_url(s.database_url)


def check_redis_url(name: str, url: str) -> None:
    """A Redis/Valkey URL with a known scheme, a host (or socket path) and a valid port."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"{var(name)} is not a Redis URL: {e}") from None
    if parts.scheme not in REDIS_SCHEMES:
        raise ConfigError(
            f"{var(name)} is not a Redis URL: scheme {parts.scheme or '(none)'!r}, "
            f"expected one of {', '.join(REDIS_SCHEMES)} (e.g. redis://127.0.0.1:6379/0)"
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigError(f"{var(name)} names no socket path (unix:///path/to/sock)")
        return
    if not parts.hostname:
        raise ConfigError(f"{var(name)} names no host (e.g. redis://127.0.0.1:6379/0)")
    if port == 0:
        raise ConfigError(f"{var(name)} has port 0: expected 1..65535")


def check_database_url(url: str) -> None:
    """An SQLAlchemy URL whose dialect is known (the driver itself loads on first use)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(url).get_dialect()
    except ArgumentError:
        raise ConfigError(
            f"{var('database_url')} is not a database URL (e.g. sqlite:////var/lib/sokovan/"
            "sokovan.db or postgresql+psycopg://user@host/db)"
        ) from None
    except NoSuchModuleError:
        scheme = url.split(":", 1)[0]
        raise ConfigError(
            f"{var('database_url')} names an unknown database kind {scheme!r} "
            "(expected sqlite:// or postgresql+psycopg://)"
        ) from None
    except ValueError as e:  # e.g. a port that is not a number
        raise ConfigError(f"{var('database_url')} is not a valid database URL: {e}") from None
