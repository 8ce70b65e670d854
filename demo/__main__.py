"""`make demo`: the whole lifecycle on the embedded defaults, then a summary.

Starts an embedded Valkey, migrates SQLite, runs two reference agents (one OS process
per kernel), a Celery worker and celery beat; launches sessions of every shape,
terminates two, kills one kernel's process and lets the beat-driven sweep reap it.
Exits 0 when every step did what it should, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psutil
from celery import Celery

from sokovan.agent.curve import create_curve_certificates
from sokovan.bootstrap import Adapters, build_redis
from sokovan.config import load_settings
from sokovan.db.engine import upgrade
from sokovan.db.repository import SchedulerRepository
from sokovan.embedded import EmbeddedValkey
from sokovan.scheduler.agents import sync_agents
from sokovan.signing_files import create_signing_files
from sokovan.types import ImageConfig, SessionId, SessionStatus
from tasks.api import Scheduler
from tasks.app import create_app
from tasks.cli.common import table
from tasks.cli.runs import runs_table
from tasks.commands import beat_args, worker_args

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "cr.backend.ai/stable/python:3.12-ubuntu22.04"
# Short presence windows so the sweep has something to find within the demo.
DEMO_SETTINGS = {
    "PRESENCE_STALE_AFTER": "4",
    "PRESENCE_REFRESH": "1",
    "SWEEP_INTERVAL": "3",
    "TERMINATE_INTERVAL": "3",
    "LAUNCH_INTERVAL": "3",
    # A handful of keys ahead of demand: the demo launches few sessions.
    "KEYPAIR_POOL_SIZE": "16",
}


def say(text: str) -> None:
    print(f"==> {text}", flush=True)


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


@contextmanager
def process(name: str, cmd: list[str], env: dict[str, str], logs: Path) -> Iterator[None]:
    """A child process for the demo's duration; its output goes to var/demo/logs/NAME.log."""
    with (logs / f"{name}.log").open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def secure_settings(var_dir: Path) -> dict[str, str]:
    """Signed task messages and CURVE to the agents, with material made for the demo."""
    signing = create_signing_files(var_dir / "signing").key.parent
    curve = create_curve_certificates(var_dir / "curve", ["a1", "a2"])
    return {"SOKOVAN_TASK_SIGNING_DIR": str(signing), **curve}


def demo_env(var_dir: Path, redis_url: str, secure: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOKOVAN_")}
    env.update({f"SOKOVAN_{k}": v for k, v in DEMO_SETTINGS.items()})
    if secure:
        env.update(secure_settings(var_dir))
    env.update(
        SOKOVAN_VAR_DIR=str(var_dir),
        SOKOVAN_REDIS_URL=redis_url,
        SOKOVAN_EMBEDDED_VALKEY="false",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(ROOT),
    )
    return env


def kernel_pid(kernel_id: str) -> int | None:
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("BACKENDAI_KERNEL_ID") == kernel_id:
                return proc.pid
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return None


def start_cluster(stack: ExitStack, var_dir: Path, secure: bool = False) -> tuple[Adapters, Celery]:
    """The cluster's processes, and the adapters and Celery app the demo drives it with."""
    logs = var_dir / "logs"
    logs.mkdir(parents=True)
    valkey = EmbeddedValkey(var_dir / "valkey", port=None, persist=False)
    redis_url = valkey.start()
    stack.callback(valkey.stop)
    env = demo_env(var_dir, redis_url, secure)
    settings = load_settings(env, dotenv=None)
    adapters = Adapters(settings)
    stack.callback(adapters.close)
    upgrade(adapters.engine)
    say(f"embedded Valkey at {redis_url}; SQLite at {settings.effective_database_url}")
    if secure:
        say("task messages signed (SOKOVAN_TASK_SIGNING_DIR), agent calls over CURVE")
    py = sys.executable
    stack.enter_context(
        process(
            "agents",
            [
                py,
                "-m",
                "sokovan.agentd",
                "run",
                "--count",
                "2",
                "--base-port",
                "0",
                "--id-prefix",
                "a",
                "--runtime",
                "process",
            ],
            env,
            logs,
        )
    )
    stack.enter_context(
        process(
            "worker",
            [py, "-m", "celery", *worker_args(concurrency=2, node="demo@%h")],
            env,
            logs,
        )
    )
    stack.enter_context(
        process(
            "beat",
            [py, "-m", "celery", *beat_args(var_dir / "beat-schedule")],
            env,
            logs,
        )
    )
    repo = adapters.repository
    repo.add_image(ImageConfig(canonical=IMAGE))

    def agents_known() -> bool:
        async def sync() -> dict[str, int]:
            redis = build_redis(settings)  # asyncio: one per event loop
            try:
                return await sync_agents(redis, adapters.store)
            finally:
                await redis.aclose()

        return asyncio.run(sync())["alive"] >= 2

    wait_until(agents_known, 60, "two reference agents to register")
    app = create_app(settings)
    stack.callback(app.close)
    wait_until(lambda: bool(app.control.ping(timeout=1.0)), 60, "the worker to answer")
    say("two reference agents (a1, a2), a worker and beat are up; logs in " + str(logs))
    return adapters, app


# The single session carries a secret variable: it must reach the kernel, and stay
# encrypted in SQL and out of every message.
SECRET = ("API_TOKEN", "demo-s3cr3t")
SHAPES: dict[str, dict[str, Any]] = {
    "single": {"environ": {SECRET[0]: SECRET[1], "GREETING": "hello"}},
    "cluster-1node": {"kernels": 3},
    "cluster-2nodes": {"kernels": 3, "cluster_mode": "multi-node"},
    "host-net": {"kernels": 2, "network_type": "host", "cluster_mode": "multi-node"},
    "persistent-net": {"kernels": 2, "network_type": "persistent", "network_id": "demo-net"},
}


def run_demo(adapters: Adapters, app: Celery) -> list[str]:
    """The lifecycle; returns the failed checks."""
    failures: list[str] = []
    repo = adapters.repository
    scheduler = Scheduler(app, adapters=adapters)

    def status(sid: SessionId) -> SessionStatus:
        return repo.get_session(sid).status

    say("launching sessions of every shape")
    sids: dict[str, SessionId] = {}
    for name, shape in SHAPES.items():
        answer = scheduler.create_session(image=IMAGE, name=name, **shape).get(timeout=30)
        sids[name] = SessionId(uuid.UUID(answer["session_id"]))
    refused = scheduler.create_session(image=IMAGE, kernels=0).get(timeout=30)
    print(f"    a zero-kernel request is refused: {refused.get('error')}")
    started = time.monotonic()
    wait_until(
        lambda: all(status(s) == SessionStatus.RUNNING for s in sids.values()),
        90,
        "every session to be RUNNING",
    )
    print(f"    all {len(sids)} sessions RUNNING after {time.monotonic() - started:.1f}s")
    rows = [
        (
            n,
            s,
            len(repo.get_session(s).kernels),
            ",".join(sorted({k.agent_id or "-" for k in repo.get_session(s).kernels})),
            repo.get_session(s).network_id or "-",
        )
        for n, s in sids.items()
    ]
    print(table(("NAME", "SESSION", "KERNELS", "AGENTS", "NETWORK"), rows))
    failures.extend(check_secret(repo, sids["single"]))

    say("terminating 'single' and 'host-net'")
    for name in ("single", "host-net"):
        scheduler.terminate_session(str(sids[name])).get(timeout=30)
    wait_until(
        lambda: all(status(sids[n]) == SessionStatus.TERMINATED for n in ("single", "host-net")),
        60,
        "both to be TERMINATED",
    )
    print("    both TERMINATED; their kernel processes are gone")

    victim = repo.get_session(sids["cluster-2nodes"]).kernels[1]
    pid = kernel_pid(str(victim.id))
    if pid is None:
        failures.append(f"kernel {victim.id} has no process")
        return failures
    say(f"killing kernel {victim.id} (pid {pid}) behind the scheduler's back")
    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: status(sids["cluster-2nodes"]) == SessionStatus.TERMINATED,
        90,
        "the beat-driven sweep to reap the dead kernel and clean up its session",
    )
    reaped = repo.get_session(sids["cluster-2nodes"])
    killed = next(k for k in reaped.kernels if k.id == victim.id)
    print(
        f"    sweep marked it {killed.status}; session {reaped.status} "
        f"({reaped.status_info}); its other kernels were destroyed"
    )
    for name in ("cluster-1node", "persistent-net"):
        if status(sids[name]) != SessionStatus.RUNNING:
            failures.append(f"{name} should still be RUNNING, is {status(sids[name])}")
    return failures


def check_secret(repo: SchedulerRepository, sid: SessionId) -> list[str]:
    """The secret variable is in the kernel's environment and not in sessions.environ."""
    session = repo.get_session(sid)
    pid = kernel_pid(str(session.kernels[0].id))
    env = psutil.Process(pid).environ() if pid is not None else {}
    if env.get(SECRET[0]) != SECRET[1]:
        return [f"kernel of session {sid} lacks {SECRET[0]}"]
    if SECRET[0] in session.environ:
        return [f"{SECRET[0]} of session {sid} is stored in clear"]
    print(f"    {SECRET[0]} reached the kernel; sessions.environ holds {sorted(session.environ)}")
    return []


def summary(adapters: Adapters) -> None:
    ledger = adapters.ledger
    runs = [r for r in ledger.list_runs(limit=200) if r.requested or r.note]
    say(f"run ledger ({len(runs)} runs that touched something; empty beat ticks left out)")
    print(runs_table(list(reversed(runs[:25]))))
    sweep = next(
        (
            r
            for r in runs
            if r.handler == "sweep_stale_kernels" and r.succeeded and "1 stale" in (r.note or "")
        ),
        None,
    )
    if sweep is not None:
        print(f"\nevidence of sweep run {sweep.id}:")
        for item in ledger.items(sweep.id):
            print(f"    kernel {item.item_id} on {item.agent_id}: {item.evidence}")


def main() -> int:
    secure = "--secure" in sys.argv[1:]
    var_dir = ROOT / "var" / ("demo-secure" if secure else "demo")
    shutil.rmtree(var_dir, ignore_errors=True)
    with ExitStack() as stack:
        try:
            adapters, app = start_cluster(stack, var_dir, secure)
            failures = run_demo(adapters, app)
            summary(adapters)
        except Exception as e:
            print(f"demo FAILED: {e} (see {var_dir / 'logs'})", file=sys.stderr)
            return 1
        say("stopping the agents, worker, beat and Valkey")
    if failures:
        print("demo FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    say("demo OK: launch, terminate and stale-kernel sweep all worked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
