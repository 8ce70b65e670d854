"""`sokovan up` (every process of the Procfile under one supervisor) and `sokovan valkey`."""

from __future__ import annotations

import os
import secrets
import signal
import sys
import threading
from pathlib import Path

import typer

from sokovan.cli.common import engine, settings
from sokovan.config import Settings
from sokovan.db.engine import upgrade as run_upgrade
from sokovan.embedded import EmbeddedValkey


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


def processes(s: Settings, agents: int = 2, concurrency: int = 2) -> dict[str, str]:
    """Process name -> command line, as in the Procfile."""
    exe = Path(sys.executable).parent
    celery = f"{exe / 'celery'} -A tasks.app"
    sokovan = f"{exe / 'sokovan'}"
    procs: dict[str, str] = {}
    if s.uses_embedded_valkey:
        procs["valkey"] = f"{sokovan} valkey"
    procs["worker"] = f"{celery} worker -E -l INFO -c {concurrency} -Q sokovan -n worker1@%h"
    procs["beat"] = f"{celery} beat -l INFO -s {s.var_dir / 'celerybeat-schedule'}"
    procs["flower"] = f"{sokovan} flower"
    procs["metrics"] = f"{sokovan} metrics"
    for i in range(1, agents + 1):
        procs[f"agent{i}"] = f"{sokovan} agent run --id a{i} --port {6010 + i} --runtime process"
    return procs


def up(
    agents: int = typer.Option(2, help="Reference agents to start (0 for none)."),
    concurrency: int = typer.Option(2, help="Worker processes."),
) -> None:
    """Runs Valkey, a worker, beat, Flower and reference agents until Ctrl-C."""
    from honcho.manager import Manager

    s = settings()
    s.var_dir.mkdir(parents=True, exist_ok=True)
    run_upgrade(engine(s, migrated=False))
    flower_password(s)  # made now, so the path printed below exists
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    manager = Manager()
    for name, cmd in processes(s, agents, concurrency).items():
        manager.add_process(name, cmd, env=env)
    typer.echo(
        f"Flower: http://{s.flower_host}:{s.flower_port}/  user {s.flower_user!r}, "
        f"password in {s.var_dir / 'flower-password'} (or SOKOVAN_FLOWER_PASSWORD); "
        f"metrics at /metrics"
    )
    manager.loop()
    sys.exit(manager.returncode)


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
    argv, env = flower_command(settings())
    os.execve(argv[0], argv, env)


def valkey(
    port: int = typer.Option(None, help="TCP port (default: SOKOVAN_EMBEDDED_VALKEY_PORT)."),
) -> None:
    """Runs the embedded Valkey server with its data and socket under var/valkey."""
    s = settings()
    server = EmbeddedValkey(s.var_dir / "valkey", port=port or s.embedded_valkey_port)
    url = server.start()
    typer.echo(f"embedded Valkey on {url} (socket {s.var_dir / 'valkey' / 'valkey.sock'})")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()
