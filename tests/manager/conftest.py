"""A virtualenv with only Celery (+redis), built once per test session: a manager's own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def manager_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh venv holding `celery[redis]` and nothing of this project.

    pip installs from the machine's configured package index and cache (about 30 s); built
    once per session, since every test of a manager shares it.
    """
    venv = tmp_path_factory.mktemp("manager-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "celery[redis]"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"pip install 'celery[redis]' into a fresh venv failed:\n{done.stderr[-3000:]}")
    return python
