"""Every way the project starts Flower has basic auth and binds loopback by default."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psutil
import pytest

from sokovan.config import load_settings
from tasks.cli.up import flower_command, processes
from tests.conftest import free_port
from tests.services import BIN, Flower
from tests.workers import ROOT, make_env, stop_process, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _listening(pid: int) -> set[str]:
    """Addresses the process tree listens on."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    found: set[str] = set()
    for proc in procs:
        for conn in proc.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr:
                found.add(conn.laddr.ip)
    return found


def test_procfile_flower_line_under_plain_honcho_requires_auth(
    tmp_path: Path, valkey_url: str
) -> None:
    """`honcho start flower` with the Procfile as shipped: 401 without the password, loopback."""
    senv = make_env(tmp_path, valkey_url)
    port = free_port()
    # As in an activated virtualenv: the Procfile names `sokovan` on PATH.
    path = f"{BIN}:{senv.env.get('PATH', '')}"
    env = {**senv.env, "SOKOVAN_FLOWER_PORT": str(port), "PATH": path}
    log = tmp_path / "honcho.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "honcho"), "-f", str(ROOT / "Procfile"), "start", "flower"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        password_file = senv.var_dir / "flower-password"
        wait_for(password_file.exists, 30, what="the generated Flower password")
        flower = Flower(proc, log, f"http://127.0.0.1:{port}", "admin", "")
        flower.password = password_file.read_text().strip()

        def answers() -> bool:
            assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
            try:
                return flower.get("/healthcheck", auth=False)[0] == 200
            except OSError:
                return False

        wait_for(answers, 60, what="Flower to answer")
        for path in ("/", "/tasks", "/api/tasks", "/api/workers", "/api/task/info/x"):
            assert flower.get(path, auth=False)[0] == 401, path
        # Flower leaves its Prometheus counters open to scrapers: names and counts only.
        assert flower.get("/metrics", auth=False)[0] == 200
        wrong = Flower(proc, log, flower.url, "admin", "not-the-password")
        assert wrong.get("/api/tasks")[0] == 401
        assert flower.get("/api/tasks")[0] == 200
        assert _listening(proc.pid) == {"127.0.0.1"}
        for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
            assert flower.password not in " ".join(p.cmdline())
    finally:
        stop_process(proc)


def test_sokovan_up_and_flower_command_share_one_authenticated_line(tmp_path: Path) -> None:
    settings = load_settings(
        {"SOKOVAN_VAR_DIR": str(tmp_path), "SOKOVAN_FLOWER_PASSWORD": "pw"}, dotenv=None
    )
    assert processes(settings)["flower"].endswith("sokovan flower")
    argv, env = flower_command(settings)
    assert "--address=127.0.0.1" in argv and "--port=5555" in argv
    assert env["FLOWER_BASIC_AUTH"] == "admin:pw" and "pw" not in " ".join(argv)
    procfile = (ROOT / "Procfile").read_text().splitlines()
    assert "flower: sokovan flower" in procfile
    wide = load_settings({"SOKOVAN_VAR_DIR": str(tmp_path), "SOKOVAN_FLOWER_HOST": "0.0.0.0"})
    assert "--address=0.0.0.0" in flower_command(wide)[0]
