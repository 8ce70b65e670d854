"""The CLI refuses what the tasks refuse, with the same message (SC-AD-008)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from sokovan.types import SessionStatus
from tests.cluster import IMAGE, Cluster, running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SOKOVAN = str(Path(sys.executable).parent / "sokovan")

# CLI options -> the request field they set, sent to the task as {"image": IMAGE, field: value}.
BAD_INPUT: list[tuple[list[str], dict[str, Any]]] = [
    (["--kernels", "1000000000"], {"kernels": 1_000_000_000}),
    (["--kernels", "0"], {"kernels": 0}),
    (["--slot", "cpu=-4"], {"resource_slots": {"cpu": "-4"}}),
    (["--slot", "cpu=NaN"], {"resource_slots": {"cpu": "NaN"}}),
    (["--slot", "gpu=1"], {"resource_slots": {"gpu": "1"}}),
    (["--name", "line\nbreak"], {"name": "line\nbreak"}),
    (["--name", "n" * 200], {"name": "n" * 200}),
    (["--cluster-mode", "ring"], {"cluster_mode": "ring"}),
    (["--network-type", "persistent"], {"network_type": "persistent"}),
    (["--kernels", "3", "--agent", "a1", "--agent", "a2"], {"kernels": 3, "agents": ["a1", "a2"]}),
    (["--env", "A=B=C", "--env", "=x"], {"environ": {"A": "B=C", "": "x"}}),
]


def cli(c: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SOKOVAN, *args], env=c.senv.env, capture_output=True, text=True, timeout=120, check=False
    )


def assert_refused(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refused: "), proc.stderr
    return lines[0].removeprefix("refused: ")


async def test_cli_and_task_refuse_alike(tmp_path: Path, valkey_url: str) -> None:
    """SC-AD-008: bad input exits 2 with the task's own message; a refusal exits 1.

    Given a worker, each bad `session create` is refused by the CLI in one line that is
    exactly the error the task returns for the same request, with exit code 2 and no
    traceback; an unknown image or session (refused by state, not by shape) exits 1."""
    async with running_cluster(tmp_path, valkey_url, agents=1, runtime="sim") as c:
        for options, fields in BAD_INPUT:
            message = assert_refused(cli(c, "session", "create", "--image", IMAGE, *options), 2)
            answer = c.send("sokovan.session.create", request={"image": IMAGE, **fields})
            assert answer["error"] == message, (options, answer, message)

        message = assert_refused(cli(c, "session", "create", "--image", IMAGE, "--slot", "cpu"), 2)
        assert message.startswith("resource_slots:")
        message = assert_refused(cli(c, "session", "create", "--image", ""), 2)
        assert message.startswith("image:")
        message = assert_refused(cli(c, "session", "terminate", "not-an-id"), 2)
        answer = c.send("sokovan.session.terminate", session_id="not-an-id")
        assert answer["error"] == message
        message = assert_refused(cli(c, "image", "add", ""), 2)
        assert message.startswith("image:")

        message = assert_refused(cli(c, "session", "create", "--image", "nope:1"), 1)
        assert "nope:1" in message
        missing = str(uuid.uuid4())
        assert missing in assert_refused(cli(c, "session", "terminate", missing), 1)

        typer_error = cli(c, "session", "create", "--image", IMAGE, "--kernels", "many")
        assert typer_error.returncode == 2 and "Traceback" not in typer_error.stderr
        assert c.repo.sessions_in(list(SessionStatus)) == []
