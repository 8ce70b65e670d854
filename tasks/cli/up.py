"""`sokovan up` (every process of the Procfile under one supervisor) and `sokovan valkey`."""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Final

import typer

from sokovan import constants as C
from sokovan.config import Settings
from sokovan.db.engine import upgrade as run_upgrade
from sokovan.embedded import EmbeddedValkey
from sokovan.types import AgentLiveness
from tasks import names
from tasks.cli.errors import CliError, Refused, Unreachable
from tasks.cli.root import CommandRoot, broker_reachable, root
from tasks.commands import beat_args, worker_args, worker_env_prefix

# How long `sokovan up` waits for Valkey to answer PING before giving up.
VALKEY_READY_TIMEOUT_SEC: Final = 20.0
# Started again when they exit on their own (an OOM kill, an unrecoverable Celery error):
# the database re-drives their work, so a restart loses nothing; the rest stop everything.
RESTARTED: Final = ("worker", "beat")


def flower_password(s: Settings) -> str:
    """The Flower password from settings, else one generated once under var_dir (mode 600)."""
    if s.flower_password:
        return s.flower_password
    path = s.var_dir / "flower-password"
    if not path.exists():
        s.var_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(12))
    return path.read_text().strip()


def processes(
    s: Settings, agents: int = 2, concurrency: int = C.WORKER_CONCURRENCY
) -> dict[str, str]:
    """Process name -> command line of what starts once Valkey answers (see the Procfile)."""
    exe = Path(sys.executable).parent
    celery = str(exe / "celery")
    sokovan = f"{exe / 'sokovan'}"
    procs = {
        # SIGTERM becomes Celery's soft, then cold shutdown: unfinished tasks go back to the
        # queue at once instead of after the visibility timeout.
        "worker": " ".join(
            [worker_env_prefix(), shlex.join([celery, *worker_args(concurrency=concurrency)])]
        ),
        "beat": shlex.join([celery, *beat_args(s.var_dir / "celerybeat-schedule")]),
        "flower": f"{sokovan} flower",
        "metrics": f"{sokovan} metrics",
    }
    for i in range(1, agents + 1):
        port = s.agent_port(i - 1)
        procs[f"agent{i}"] = f"{sokovan} agent run --id a{i} --port {port} --runtime process"
    return procs


def ports(s: Settings, agents: int) -> list[tuple[str, int, str, str]]:
    """(what, port, the setting that moves it, address) of every port `sokovan up` binds."""
    loopback = "127.0.0.1"
    out = []
    if s.uses_embedded_valkey:
        out.append(
            ("embedded Valkey", s.embedded_valkey_port, "SOKOVAN_EMBEDDED_VALKEY_PORT", loopback)
        )
    out.append(("Flower", s.flower_port, "SOKOVAN_FLOWER_PORT", s.flower_host))
    out.append(("metrics", s.metrics_port, "SOKOVAN_METRICS_PORT", s.metrics_host))
    which = "SOKOVAN_AGENT_PORTS" if s.agent_ports else "SOKOVAN_AGENT_BASE_PORT"
    out += [(f"agent a{i + 1}", s.agent_port(i), which, loopback) for i in range(agents)]
    return out


def ensure_free(what: str, port: int, setting: str, host: str = "127.0.0.1") -> None:
    """Refuses, in one line naming the setting, a port that something already holds."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As servers bind: a closed connection lingering in TIME_WAIT does not hold the port.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            raise Refused(
                f"port {port} ({what}) is already in use: set {setting} to a free port, "
                "or stop what holds it (another `sokovan up`?)"
            ) from None


def wait_for_broker(
    s: Settings, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Returns once the broker answers PING; refuses after `timeout` or if `proc` exits."""
    deadline = time.monotonic() + timeout
    while not broker_reachable(s, 1.0):
        if proc is not None and proc.poll() is not None:
            raise CliError(f"failed: the embedded Valkey exited (see {s.var_dir / 'valkey.log'})")
        if time.monotonic() > deadline:
            raise Unreachable(f"Valkey at {s.redis_url} did not answer PING within {timeout:g}s")
        time.sleep(0.1)


def _alive_agents(r: CommandRoot) -> int:
    """Agents in the agents table that placement may use (what `agents list` shows ALIVE)."""
    return sum(1 for a in r.repository.list_agents() if a.status == AgentLiveness.ALIVE)


def announce_when_ready(r: CommandRoot, agents: int, stop: threading.Event) -> None:
    """Prints one `up` line once a worker answers ping and every agent can take sessions.

    An agent's self-registration reaches the agents table (where placement looks) through
    `sokovan.agents.sync`: sent here as soon as the agents registered, instead of waiting for
    beat's next sync, so the first `session create` is placed rather than left PENDING.
    """
    synced_at = 0.0
    while not stop.is_set():
        try:
            workers = r.app.control.ping(timeout=C.STATUS_PING_TIMEOUT_SEC) or []
            registered = int(r.redis.hlen(C.AGENT_REGISTRY_KEY))
            alive = _alive_agents(r)
            if workers and registered >= agents > alive and time.monotonic() > synced_at + 2:
                r.app.send_task(names.AGENTS_SYNC)
                synced_at = time.monotonic()
        except Exception:  # not ready yet; the supervisor reports processes that fail
            workers, alive = [], 0
        if workers and alive >= agents:
            typer.echo(
                f"sokovan is up: {len(workers)} worker(s), {alive} agent(s) registered and "
                f"taking sessions; data in {r.settings.var_dir}",
            )
            return
        stop.wait(0.5)


def start_valkey(s: Settings, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`sokovan valkey` in a session of its own: Ctrl-C stops the others first, then it."""
    log = (s.var_dir / "valkey.log").open("ab")
    with log:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "sokovan"), "valkey"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_valkey(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def up(
    agents: int = typer.Option(2, min=0, help="Reference agents to start (0 for none)."),
    concurrency: int = typer.Option(C.WORKER_CONCURRENCY, min=1, help="Worker processes."),
) -> None:
    """Runs Valkey, then a worker, beat, Flower, metrics and reference agents, until Ctrl-C."""
    from tasks.cli.supervisor import Supervisor

    r = root()
    s = r.settings
    for what, port, setting, host in ports(s, agents):
        ensure_free(what, port, setting, host)
    s.var_dir.mkdir(parents=True, exist_ok=True)
    run_upgrade(r.engine(migrated=False))
    flower_password(s)  # made now, so the path printed below exists
    env = dict(os.environ, SOKOVAN_VAR_DIR=str(s.var_dir), PYTHONUNBUFFERED="1")
    valkey = start_valkey(s, env) if s.uses_embedded_valkey else None
    stop = threading.Event()
    try:
        wait_for_broker(s, VALKEY_READY_TIMEOUT_SEC, valkey)
        manager = Supervisor(processes(s, agents, concurrency), RESTARTED, env=env)
        typer.echo(
            f"Flower: http://{s.flower_host}:{s.flower_port}/  user {s.flower_user!r}, "
            f"password in {s.var_dir / 'flower-password'} (or SOKOVAN_FLOWER_PASSWORD); "
            f"metrics: http://{s.metrics_host}:{s.metrics_port}/metrics"
        )
        threading.Thread(target=announce_when_ready, args=(r, agents, stop), daemon=True).start()
        returncode = manager.loop()
    finally:
        stop.set()
        if valkey is not None:
            stop_valkey(valkey)
    raise typer.Exit(returncode)


def flower_command(s: Settings) -> tuple[list[str], dict[str, str]]:
    """Flower's command line and environment: basic auth always, bound to SOKOVAN_FLOWER_HOST."""
    exe = Path(sys.executable).parent / "celery"
    argv = [str(exe), "-A", "tasks.app", "flower"]
    argv += [f"--address={s.flower_host}", f"--port={s.flower_port}"]
    # The credentials travel in Flower's environment, not its command line, which any local
    # user can read in the process list.
    env = dict(os.environ, FLOWER_BASIC_AUTH=f"{s.flower_user}:{flower_password(s)}")
    env.pop("FLOWER_UNAUTHENTICATED_API", None)
    return argv, env


def flower() -> None:
    """Runs Flower with basic auth on SOKOVAN_FLOWER_HOST:SOKOVAN_FLOWER_PORT (exec)."""
    argv, env = flower_command(root().settings)
    os.execve(argv[0], argv, env)


def valkey(
    port: int = typer.Option(
        None, min=1, max=65535, help="TCP port (default: SOKOVAN_EMBEDDED_VALKEY_PORT)."
    ),
) -> None:
    """Runs the embedded Valkey server with its data, append-only file and socket under
    var/valkey: queued tasks survive the server being killed and started again."""
    s = root().settings
    port = port or s.embedded_valkey_port
    ensure_free("embedded Valkey", port, "SOKOVAN_EMBEDDED_VALKEY_PORT")
    server = EmbeddedValkey(s.var_dir / "valkey", port=port, append_only=True)
    url = server.start()
    typer.echo(f"embedded Valkey on {url} (socket {s.var_dir / 'valkey' / 'valkey.sock'})")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()
