"""Beat, Flower, a Redis MONITOR tap and leak scans for integration tests."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis as sync_redis
import sqlalchemy as sa

from tasks.commands import beat_args
from tests.conftest import free_port
from tests.workers import ROOT, SchedulerEnv, WorkerProcess, stop_process, wait_for

BIN = Path(sys.executable).parent


def secret_forms(secret: str) -> list[bytes]:
    """The secret as bytes, and the parts of its base64 forms that do not depend on neighbours.

    Kombu's Redis transport base64-encodes message bodies, so a plain search would miss them.
    """
    raw = secret.encode()
    once = _base64_cores(raw)
    # Signed messages (the auth serializer) are base64 inside the transport's base64.
    twice = [core for inner in once for core in _base64_cores(inner) if len(core) >= 8]
    return [raw, *once, *twice]


def _base64_cores(data: bytes) -> list[bytes]:
    """What base64 of `data` always contains, at each of the three alignments it can have."""
    cores = []
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + data)
        cores.append(encoded[4 if offset else 0 : -4])
    return cores


def leaks(blob: bytes | str, secret: str) -> bool:
    """Whether the blob holds the secret in clear or base64-encoded."""
    data = blob.encode(errors="replace") if isinstance(blob, str) else blob
    return any(form in data for form in secret_forms(secret))


def redis_dump(url: str) -> dict[bytes, list[bytes]]:
    """Every key of the database: its DUMP and its values read by type."""
    client = sync_redis.Redis.from_url(url)
    out: dict[bytes, list[bytes]] = {}
    try:
        for key in client.scan_iter(count=1000):
            raw_kind = client.type(key)
            kind = raw_kind.decode() if isinstance(raw_kind, bytes) else str(raw_kind)
            values: list[Any] = [client.dump(key) or b""]
            if kind == "string":
                values.append(client.get(key) or b"")
            elif kind == "list":
                values.extend(client.lrange(key, 0, -1))
            elif kind == "hash":
                values.extend(v for kv in client.hgetall(key).items() for v in kv)
            elif kind == "set":
                values.extend(client.smembers(key))
            elif kind == "zset":
                values.extend(client.zrange(key, 0, -1))
            elif kind == "stream":
                for entry_id, fields in client.xrange(key) or []:
                    values.append(entry_id)
                    values.extend(v for kv in (fields or {}).items() for v in kv)
            out[key] = [v if isinstance(v, bytes) else str(v).encode() for v in values]
    finally:
        client.close()
    return out


@dataclass
class MonitorTap:
    """Every command the Redis server executes while the tap runs (MONITOR)."""

    url: str
    commands: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        client = sync_redis.Redis.from_url(self.url)
        try:
            with client.monitor() as monitor:  # type: ignore[no-untyped-call]
                ready.set()
                for event in monitor.listen():
                    self.commands.append(str(event.get("command", "")))
                    if self._stop.is_set():
                        break
        except sync_redis.ConnectionError:
            pass  # the server stopped first (a failed test's teardown)
        finally:
            client.close()

    def stop(self) -> None:
        self._stop.set()
        poke = sync_redis.Redis.from_url(self.url)
        poke.ping()  # wakes the tap so it sees the stop flag
        poke.close()
        if self._thread is not None:
            self._thread.join(10)


def sql_rows(engine: sa.Engine) -> list[str]:
    """Every row of every table, as text."""
    rows: list[str] = []
    with engine.connect() as conn:
        for table in sa.inspect(conn).get_table_names():
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                rows.append(repr(tuple(row)))
    return rows


@contextmanager
def celery_beat(
    senv: SchedulerEnv, loglevel: str = "INFO", name: str = "beat"
) -> Iterator[WorkerProcess]:
    """A `celery beat` subprocess with its own schedule file; stopped after."""
    log = senv.var_dir / f"{name}.log"
    schedule = senv.var_dir / f"{name}-schedule"
    cmd = [sys.executable, "-m", "celery", *beat_args(schedule, loglevel=loglevel)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=senv.env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    beat = WorkerProcess(proc, log, name)
    try:
        wait_for(lambda: "beat: Starting" in beat.output() or proc.poll() is not None, 30)
        assert proc.poll() is None, beat.output()[-2000:]
        yield beat
    finally:
        stop_process(proc)


@dataclass
class Flower:
    proc: subprocess.Popen[bytes]
    log: Path
    url: str
    user: str
    password: str

    def get(self, path: str, auth: bool = True) -> tuple[int, bytes]:
        """GET a Flower path; returns (status, body)."""
        request = urllib.request.Request(self.url + path)
        if auth:
            token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return int(answer.status), bytes(answer.read())
        except urllib.error.HTTPError as e:
            return int(e.code), bytes(e.read())

    def json(self, path: str) -> Any:
        status, body = self.get(path)
        assert status == 200, (path, status, body[:300])
        return json.loads(body)


@contextmanager
def flower_process(senv: SchedulerEnv, password: str = "test-flower-pw") -> Iterator[Flower]:
    """`sokovan flower` on a free loopback port, against the test's broker."""
    port = free_port()
    log = senv.var_dir / "flower.log"
    env = {**senv.env, "SOKOVAN_FLOWER_PORT": str(port), "SOKOVAN_FLOWER_PASSWORD": password}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "sokovan"), "flower"], cwd=ROOT, env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    flower = Flower(proc, log, f"http://127.0.0.1:{port}", "admin", password)

    def up() -> bool:
        assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
        try:
            return flower.get("/healthcheck", auth=False)[0] == 200
        except OSError:
            return False

    try:
        wait_for(up, 60, what="Flower to answer")
        yield flower
    finally:
        stop_process(proc)


def wait_quiet(seconds: float) -> None:
    """Lets events and acknowledgements land before a scan (not a timing assertion)."""
    time.sleep(seconds)


def run_cli(senv: SchedulerEnv, *args: str) -> str:
    """Runs `sokovan ARGS` as a user would; returns its output, failing on a non-zero exit."""
    done = subprocess.run(
        [str(BIN / "sokovan"), *args], cwd=ROOT, env=senv.env, capture_output=True,
        text=True, timeout=90, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
