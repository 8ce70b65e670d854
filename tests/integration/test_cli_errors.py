"""Every bad CLI input or unreachable service: one line on stderr, the documented exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from sokovan.db.engine import create_engine
from sokovan.db.repository import NewKernel, SchedulerRepository
from sokovan.types import AgentId, KernelId, ResourceSlot, SessionId, SessionStatus
from tests.workers import celery_worker, make_env

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
IMAGE = "cr.backend.ai/stable/python:3.12-ubuntu22.04"
UNKNOWN = str(uuid.uuid4())

# (what, arguments, extra settings, exit code, a word the one line must hold)
CASES = [
    ("unknown session", ["session", "terminate", UNKNOWN], {}, 1, UNKNOWN),
    ("unknown session shown", ["session", "show", UNKNOWN], {}, 1, UNKNOWN),
    ("not a session id", ["session", "terminate", "nope"], {}, 2, "session_id"),
    (
        "slot without value",
        ["session", "create", "--image", IMAGE, "--slot", "cpu"],
        {},
        2,
        "resource_slots",
    ),
    ("slot not a number", ["session", "create", "--image", IMAGE, "--slot", "cpu=x"], {}, 2, "cpu"),
    ("mem not a size", ["session", "create", "--image", IMAGE, "--slot", "mem=8x"], {}, 2, "mem"),
    (
        "env without value",
        ["session", "create", "--image", IMAGE, "--env", "FOO"],
        {},
        2,
        "environ",
    ),
    (
        "cluster mode",
        ["session", "create", "--image", IMAGE, "--cluster-mode", "x"],
        {},
        2,
        "cluster_mode",
    ),
    (
        "network type",
        ["session", "create", "--image", IMAGE, "--network-type", "x"],
        {},
        2,
        "network_type",
    ),
    (
        "bad mem unit",
        ["agents", "register", "n1", "--rpc-addr", "tcp://127.0.0.1:1", "--mem", "8x"],
        {},
        2,
        "capacity.mem:",
    ),
    (
        "bad rpc address",
        ["agents", "register", "n1", "--rpc-addr", "10.0.0.5:6001"],
        {},
        2,
        "rpc_addr:",
    ),
    (
        "count above its maximum",
        ["session", "create", "--image", IMAGE, "--count", "10001"],
        {},
        2,
        "--count",
    ),
    (
        "count overflowing",
        ["session", "create", "--image", IMAGE, "--count", "99999999999999999999"],
        {},
        2,
        "--count",
    ),
    ("unknown run", ["runs", "show", "999"], {}, 1, "999"),
    ("image name", ["image", "add", ""], {}, 2, "image"),
    (
        "kernels not a number",
        ["session", "create", "--image", IMAGE, "--kernels", "x"],
        {},
        2,
        "--kernels",
    ),
    ("unknown handler", ["handlers", "pause", "nope"], {}, 2, "nope"),
    ("bad window", ["runs", "stats", "--since", "yesterday"], {}, 2, "--since"),
    ("misspelt setting", ["session", "list"], {"SOKOVAN_REDIS_ULR": "x"}, 2, "SOKOVAN_REDIS_URL"),
    (
        "malformed setting",
        ["session", "list"],
        {"SOKOVAN_METRICS_PORT": "high"},
        2,
        "SOKOVAN_METRICS_PORT",
    ),
    (
        "broker down, create",
        ["session", "create", "--image", IMAGE, "--wait", "5"],
        {},
        3,
        "broker",
    ),
    ("broker down, terminate", ["session", "terminate", "SID"], {}, 3, "broker"),
    (
        "broker down, run",
        ["handlers", "run", "sweep_stale_kernels", "--wait", "5"],
        {},
        3,
        "broker",
    ),
    ("broker down, status", ["status"], {}, 3, "DOWN"),
    (
        "database unreachable",
        ["session", "list"],
        {"SOKOVAN_DATABASE_URL": "postgresql+psycopg://u@127.0.0.1:1/x"},
        3,
        "unreachable",
    ),
    (
        "no schema",
        ["session", "list"],
        {"SOKOVAN_DATABASE_URL": "sqlite:///EMPTY"},
        1,
        "sokovan db upgrade",
    ),
]


def sokovan(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "sokovan"), *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("what", "args", "extra", "code", "word"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input_gives_one_line_and_its_exit_code(
    offline_env: dict[str, str],
    tmp_path: Path,
    what: str,
    args: list[str],
    extra: dict[str, str],
    code: int,
    word: str,
) -> None:
    """Exit 2 for bad input, 1 for refused, 3 for unreachable; one line, never a traceback."""
    env = dict(offline_env, **extra)
    if env["SOKOVAN_DATABASE_URL"] == "sqlite:///EMPTY":
        env["SOKOVAN_DATABASE_URL"] = f"sqlite:///{tmp_path / 'empty.db'}"
    if "SID" in args:
        sid = json.loads(sokovan(["session", "list", "--json"], env).stdout)
        assert sid["sessions"] == []
        args = [a if a != "SID" else _stored_session(env) for a in args]
    started = time.monotonic()
    done = sokovan(args, env)
    took = time.monotonic() - started
    assert done.returncode == code, (what, done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
    if args == ["status"]:
        assert word in done.stdout
        return
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert word in lines[0], lines[0]
    prefix = {
        1: ("refused: ", "failed: "),
        2: ("refused: ", "bad setting: ", "sokovan "),
        3: ("unreachable: ",),
    }
    assert lines[0].startswith(prefix[code]), lines[0]
    if "--wait" in args:
        # Bounded by its own --wait (plus start-up), never the 20 s of broker retries seen before.
        assert took < 5 + 15, took


def _stored_session(env: dict[str, str]) -> str:
    """A RUNNING session row straight in the database, so terminate gets past the id check."""
    sid = SessionId(uuid.uuid4())
    kernel = NewKernel(KernelId(uuid.uuid4()), AgentId("a1"), IMAGE, ResourceSlot())
    repo = SchedulerRepository(create_engine(env["SOKOVAN_DATABASE_URL"]))
    repo.create_session(session_id=sid, name="s", kernels_=[kernel], status=SessionStatus.RUNNING)
    return str(sid)


def test_accepted_units_and_a_skipped_run_exit_codes(tmp_path: Path, valkey_url: str) -> None:
    """`--mem 8g` is accepted as `agent run --mem 32g` is; a paused handler's run is skipped and
    `handlers run --wait` exits 1 saying so (docs/operator/cli.md: a skipped run exits non-zero)."""
    senv = make_env(tmp_path, valkey_url)
    env = dict(senv.env, PATH=f"{BIN}{os.pathsep}{senv.env.get('PATH', '')}")
    registered = sokovan(
        ["agents", "register", "n1", "--rpc-addr", "tcp://127.0.0.1:1", "--mem", "8g"], env
    )
    assert registered.returncode == 0, registered.stderr
    agents = json.loads(sokovan(["agents", "list", "--json"], env).stdout)["agents"]
    assert agents[0]["capacity"] == {"cpu": "4", "mem": str(8 * 2**30)}
    assert sokovan(["handlers", "pause", "sweep_stale_kernels"], env).returncode == 0
    with celery_worker(senv):
        done = sokovan(["handlers", "run", "sweep_stale_kernels", "--wait", "30", "--json"], env)
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["status"] == "skipped"
    lines = done.stderr.strip().splitlines()
    assert "skipped" in lines[-1] and "paused" in lines[-1], done.stderr
