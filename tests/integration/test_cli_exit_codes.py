"""SC-OP-007: over a table of more than 100 bad inputs, every command exits with the code the
README's table gives (0 done, 1 refused or failed, 2 bad input, 3 unreachable), with one line
on stderr and never a traceback; a command that only reads creates no file or folder."""

from __future__ import annotations

import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sokovan.config_rules import MAPPING_RANGES, RANGES, var
from sokovan.db.engine import create_engine

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
IMAGE = "cr.backend.ai/stable/python:3.12-ubuntu22.04"
CREATE = ["session", "create", "--image", IMAGE, "--wait", "1"]
HUGE = "99999999999999999999"
REGISTER = ["agents", "register", "n9"]
# The first word of the one line, per exit code (README, The CLI).
PREFIX = {
    1: ("refused: ", "failed: "),
    2: ("refused: ", "bad setting: ", "sokovan"),
    3: ("unreachable: ",),
}


@dataclass(frozen=True)
class Case:
    """One input: the arguments, extra settings, the exit code and a word the line holds."""

    what: str
    args: list[str]
    code: int
    word: str = ""
    env: dict[str, str] = field(default_factory=dict)


def _ids() -> list[Case]:
    bad = ["nope", "1234", "", "../etc/passwd", str(uuid.uuid4())[:-1], "x" * 300]
    cases = [Case(f"session show {b!r}", ["session", "show", b], 2, "session") for b in bad]
    cases += [Case(f"terminate {b!r}", ["session", "terminate", b], 2, "session") for b in bad]
    unknown = str(uuid.uuid4())
    cases += [
        Case("unknown session shown", ["session", "show", unknown], 1, unknown),
        Case("runs show word", ["runs", "show", "abc"], 2, "run_id"),
        Case("runs show negative", ["runs", "show", "-3"], 2, "-3"),
        Case("runs show zero", ["runs", "show", "0"], 2, "run_id"),
        Case("runs show overflow", ["runs", "show", HUGE], 2, "run_id"),
        Case("runs show unknown", ["runs", "show", "999"], 1, "999"),
    ]
    return cases


def _lists() -> list[Case]:
    cases = []
    for cmd in (["session", "list"], ["runs", "list"]):
        name = " ".join(cmd)
        cases += [
            Case(f"{name} --limit -5", [*cmd, "--limit", "-5"], 2, "--limit"),
            Case(f"{name} --limit x", [*cmd, "--limit", "x"], 2, "--limit"),
            Case(f"{name} --limit 1.5", [*cmd, "--limit", "1.5"], 2, "--limit"),
            Case(f"{name} --limit overflow", [*cmd, "--limit", HUGE], 2, "--limit"),
        ]
    return [
        *cases,
        Case("runs list --handler bogus", ["runs", "list", "--handler", "bogus"], 2, "bogus"),
        Case("runs list --status bogus", ["runs", "list", "--status", "bogus"], 2, "--status"),
        Case("runs stats --handler bogus", ["runs", "stats", "--handler", "bogus"], 2, "bogus"),
        Case("session list --status", ["session", "list", "--status", "bogus"], 2, "--status"),
        Case("agents list --status", ["agents", "list", "--status", "bogus"], 2, "bogus"),
        Case("since words", ["runs", "stats", "--since", "yesterday"], 2, "--since"),
        Case("since negative", ["runs", "stats", "--since", "-5h"], 2, "--since"),
        Case("since unit", ["runs", "stats", "--since", "5y"], 2, "--since"),
    ]


def _create() -> list[Case]:
    return [
        Case("slot without value", [*CREATE, "--slot", "cpu"], 2, "resource_slots"),
        Case("slot not a number", [*CREATE, "--slot", "cpu=x"], 2, "cpu"),
        Case("mem not a size", [*CREATE, "--slot", "mem=8x"], 2, "mem"),
        Case("env without value", [*CREATE, "--env", "FOO"], 2, "environ"),
        Case("cluster mode", [*CREATE, "--cluster-mode", "x"], 2, "cluster_mode"),
        Case("network type", [*CREATE, "--network-type", "x"], 2, "network_type"),
        Case("kernels word", [*CREATE, "--kernels", "many"], 2, "--kernels"),
        Case("kernels zero", [*CREATE, "--kernels", "0"], 2, "kernels"),
        Case("kernels negative", [*CREATE, "--kernels", "-1"], 2, "kernels"),
        Case("kernels above max", [*CREATE, "--kernels", "65"], 2, "kernels"),
        Case("kernels overflow", [*CREATE, "--kernels", HUGE], 2, "kernels"),
        Case("count zero", [*CREATE, "--count", "0"], 2, "--count"),
        Case("count above max", [*CREATE, "--count", "10001"], 2, "--count"),
        Case("count overflow", [*CREATE, "--count", HUGE], 2, "--count"),
        Case("wait negative", [*CREATE, "--wait", "-1"], 2, "--wait"),
        Case("wait word", [*CREATE, "--wait", "soon"], 2, "--wait"),
        Case("no image", ["session", "create"], 2, "--image"),
        Case("image name empty", ["image", "add", ""], 2, "image"),
        Case(
            "bad mem unit",
            ["agents", "register", "n1", "--rpc-addr", "tcp://h:1", "--mem", "8x"],
            2,
            "mem",
        ),
        Case(
            "bad rpc address",
            ["agents", "register", "n1", "--rpc-addr", "10.0.0.5:6001"],
            2,
            "rpc_addr",
        ),
        *(
            Case(f"register {' '.join(extra)}", [*REGISTER, *extra], 2, word)
            for extra, word in (
                (["--rpc-addr", "tcp://127.0.0.1:99999"], "rpc_addr"),
                (["--rpc-addr", "udp://127.0.0.1:1"], "rpc_addr"),
                (["--rpc-addr", "tcp://127.0.0.1:1", "--cpu", "-3"], "cpu"),
                (["--rpc-addr", "tcp://127.0.0.1:1", "--cpu", "nan"], "cpu"),
                (["--rpc-addr", "tcp://127.0.0.1:1", "--cpu", "1e400"], "cpu"),
                (["--rpc-addr", "tcp://127.0.0.1:1", "--mem", "0"], "mem"),
            )
        ),
        Case("handler unknown", ["handlers", "pause", "nope"], 2, "nope"),
        Case("handler run unknown", ["handlers", "run", "nope"], 2, "nope"),
        Case(
            "budget negative",
            ["handlers", "run", "sweep_stale_kernels", "--budget", "-1"],
            2,
            "--budget",
        ),
        Case("unknown command", ["frobnicate"], 2, "frobnicate"),
        Case("metrics port", ["metrics", "--port", "99999"], 2, "--port"),
        Case("valkey port", ["valkey", "--port", "0"], 2, "--port"),
        Case("unknown option", ["session", "list", "--colour"], 2, "--colour"),
    ]


def _settings() -> list[Case]:
    cases = []
    for name, allowed in RANGES.items():
        below = allowed.low - 1 if not allowed.open_low else allowed.low
        cases.append(
            Case(f"{name} too small", ["runs", "list"], 2, var(name), {var(name): f"{below:g}"})
        )
        cases.append(
            Case(
                f"{name} too large",
                ["runs", "list"],
                2,
                var(name),
                {var(name): f"{allowed.high * 10 + 1:g}"},
            )
        )
    for name in ("sweep_interval", "metrics_port", "agent_call_timeout"):
        for raw in ("nan", "inf", "high", ""):
            cases.append(Case(f"{name}={raw!r}", ["runs", "list"], 2, var(name), {var(name): raw}))
    for name in MAPPING_RANGES:
        cases.append(
            Case(
                f"{name} negative",
                ["runs", "list"],
                2,
                var(name),
                {var(name): "sweep_stale_kernels=-1"},
            )
        )
        cases.append(
            Case(
                f"{name} malformed",
                ["runs", "list"],
                2,
                var(name),
                {var(name): "sweep_stale_kernels"},
            )
        )
    bad_env = {
        "SOKOVAN_DATABASE_URL": ["bogus://x", "notaurl", "postgresql+psycopg://u@h:notaport/x"],
        "SOKOVAN_REDIS_URL": ["bogus://x", "127.0.0.1:6379", "redis://h:99999/0", "redis://"],
        "SOKOVAN_PRESENCE_URL": ["http://h/0", "redis://:pw@"],
        "SOKOVAN_AGENT_PORTS": ["1,99999", "a,b"],
        "SOKOVAN_EMBEDDED_VALKEY": ["maybe"],
        "SOKOVAN_LOG_LEVEL": ["LOUD"],
        "SOKOVAN_FLOWER_HOST": [" "],
        "SOKOVAN_RETRY_BACKOFF": ["500"],
        "SOKOVAN_RECLAIM_POLICIES": ["{", "[]", '{"gpu": {"idle_timeut": 5}}'],
    }
    for key, values in bad_env.items():
        cases += [Case(f"{key}={v!r}", ["runs", "list"], 2, key, {key: v}) for v in values]
    policy = {"SOKOVAN_RECLAIM_POLICIES": '{"gpu": {"brake_share": 2}}'}
    cases.append(
        Case("reclaim policy out of range", ["reclaim", "policies"], 2, "brake_share", policy)
    )
    cases.append(
        Case(
            "misspelt setting", ["runs", "list"], 2, "SOKOVAN_REDIS_URL", {"SOKOVAN_REDIS_ULR": "x"}
        )
    )
    return cases


def _services() -> list[Case]:
    pg = {"SOKOVAN_DATABASE_URL": "postgresql+psycopg://u@127.0.0.1:1/x"}
    return [
        Case("broker down, create", CREATE, 3, "broker"),
        Case("broker down, terminate", ["session", "terminate", "SID"], 3, "broker"),
        Case(
            "broker down, run",
            ["handlers", "run", "sweep_stale_kernels", "--wait", "1"],
            3,
            "broker",
        ),
        Case("database unreachable, list", ["session", "list"], 3, "unreachable", pg),
        Case("database unreachable, runs", ["runs", "list"], 3, "unreachable", pg),
        Case(
            "read-only database",
            ["image", "add", "x/y:1"],
            1,
            "read-only",
            {"SOKOVAN_DATABASE_URL": "RO"},
        ),
        Case(
            "read-only database, handler",
            ["handlers", "pause", "sweep_stale_kernels"],
            1,
            "read-only",
            {"SOKOVAN_DATABASE_URL": "RO"},
        ),
        Case(
            "no schema",
            ["session", "list"],
            1,
            "sokovan db upgrade",
            {"SOKOVAN_DATABASE_URL": "EMPTY"},
        ),
    ]


def _missing_data() -> list[Case]:
    reads = [
        ["session", "list"],
        ["runs", "list"],
        ["agents", "list"],
        ["image", "list"],
        ["db", "current"],
        ["runs", "stats"],
        ["handlers", "list"],
        ["reclaim", "policies"],
    ]
    return [
        Case(f"no data: {' '.join(c)}", c, 1, "no data", {"SOKOVAN_VAR_DIR": "MISSING"})
        for c in reads
    ]


def _reclaim() -> list[Case]:
    gpu = ["reclaim", "set", "gpu"]
    return [
        Case("reclaim set no option", gpu, 2, "at least one option"),
        Case("reclaim set share > 1", [*gpu, "--brake-share", "2"], 2, "brake_share"),
        Case("reclaim set negative share", [*gpu, "--brake-share", "-1"], 2, "brake_share"),
        Case("reclaim set bad duration", [*gpu, "--idle-timeout", "soon"], 2, "--idle-timeout"),
        Case("reclaim set word threshold", [*gpu, "--idle-threshold", "x"], 2, "idle-threshold"),
        Case("reclaim set nan threshold", [*gpu, "--idle-threshold", "nan"], 2, "idle_threshold"),
        Case("reclaim set long group", ["reclaim", "set", "g" * 65, "--enforce"], 2, "group"),
        Case("reclaim unset never set", ["reclaim", "unset", "gpu"], 1, "gpu"),
    ]


CASES = [
    *_ids(),
    *_lists(),
    *_create(),
    *_settings(),
    *_services(),
    *_missing_data(),
    *_reclaim(),
]


def _stored_session(env: dict[str, str]) -> str:
    from sokovan.db.repository import NewKernel, SchedulerRepository
    from sokovan.types import AgentId, KernelId, ResourceSlot, SessionId, SessionStatus

    sid = SessionId(uuid.uuid4())
    kernel = NewKernel(KernelId(uuid.uuid4()), AgentId("a1"), IMAGE, ResourceSlot())
    repo = SchedulerRepository(create_engine(env["SOKOVAN_DATABASE_URL"]))
    repo.create_session(session_id=sid, name="s", kernels_=[kernel], status=SessionStatus.RUNNING)
    return str(sid)


def _env(case: Case, base: dict[str, str], tmp: Path) -> dict[str, str]:
    env = dict(base, **case.env)
    db_path = base["SOKOVAN_DATABASE_URL"].split("///", 1)[1]
    special = {
        "RO": f"sqlite:///file:{db_path}?mode=ro&uri=true",
        "EMPTY": f"sqlite:///{tmp / 'empty.db'}",
    }
    env["SOKOVAN_DATABASE_URL"] = special.get(
        env["SOKOVAN_DATABASE_URL"], env["SOKOVAN_DATABASE_URL"]
    )
    if env["SOKOVAN_VAR_DIR"] == "MISSING":
        env["SOKOVAN_VAR_DIR"] = str(tmp / "missing" / "var")
        env.pop("SOKOVAN_DATABASE_URL")
    return env


def _deviation(case: Case, env: dict[str, str]) -> str | None:
    """What the command did against what the README promises, or None when it kept it."""
    done = subprocess.run(
        [str(BIN / "sokovan"), *case.args], env=env, capture_output=True, text=True, timeout=90
    )
    lines = done.stderr.strip().splitlines()
    said = f"{case.what}: exit {done.returncode}, stderr {done.stderr.strip()[:300]!r}"
    if "Traceback" in done.stdout + done.stderr:
        return f"{said} (a traceback)"
    if done.returncode != case.code:
        return f"{said} (expected exit {case.code})"
    if len(lines) != 1:
        return f"{said} (expected one line)"
    if not lines[0].startswith(PREFIX[case.code]) or case.word not in lines[0]:
        return f"{said} (expected a line starting {PREFIX[case.code]} naming {case.word!r})"
    return None


@pytest.mark.timeout(1500)  # ~200 commands, four at a time, each a fresh interpreter
def test_sc_op_007_exit_codes_keep_their_promise(
    offline_env: dict[str, str], tmp_path: Path
) -> None:
    """SC-OP-007: more than 100 bad inputs, each with the README's exit code and one line."""
    assert len(CASES) >= 100, len(CASES)
    sid = _stored_session(offline_env)
    jobs = []
    for case in CASES:
        args = [sid if a == "SID" else a for a in case.args]
        jobs.append(
            (
                Case(case.what, args, case.code, case.word, case.env),
                _env(case, offline_env, tmp_path),
            )
        )
    with ThreadPoolExecutor(max_workers=4) as pool:
        found = [d for d in pool.map(lambda job: _deviation(*job), jobs) if d]
    assert not found, f"{len(found)} deviation(s):\n" + "\n".join(found)
    assert not (tmp_path / "missing").exists(), "a command that only reads created its data folder"


def test_sc_op_007_version_prints_one_line(offline_env: dict[str, str]) -> None:
    """SC-OP-007: `sokovan --version` prints one line and exits 0, with no settings needed."""
    done = subprocess.run(
        [str(BIN / "sokovan"), "--version"],
        env=dict(offline_env, SOKOVAN_METRICS_PORT="99999"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("sokovan ") and len(done.stdout.strip().splitlines()) == 1
    assert done.stderr == ""
