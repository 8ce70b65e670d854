"""The docs build is strict: a copy of the pages with one broken reference fails to build."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def copy_of_the_docs(folder: Path) -> Path:
    """mkdocs.yml and docs/ copied into `folder`; returns the copy's mkdocs.yml."""
    shutil.copy(ROOT / "mkdocs.yml", folder / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", folder / "docs")
    return folder / "mkdocs.yml"


def build(config: Path) -> subprocess.CompletedProcess[str]:
    """`mkdocs build` of `config`, into a site folder beside it."""
    command = ["build", "-f", str(config), "-d", str(config.parent / "site")]
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", *command],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def append(page: str, text: str) -> Callable[[Path], None]:
    def breaks(folder: Path) -> None:
        with (folder / "docs" / page).open("a") as f:
            f.write(f"\n{text}\n")

    return breaks


def add_page(folder: Path) -> None:
    (folder / "docs" / "orphan.md").write_text("# Left out of the nav\n")


def nav_to_nowhere(folder: Path) -> None:
    config = folder / "mkdocs.yml"
    config.write_text(
        config.read_text().replace(
            "  - Scenarios: scenarios.md\n", "  - Scenarios: scenarios.md\n  - Gone: gone.md\n"
        )
    )


BREAKAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "a link to a page that does not exist": (append("index.md", "[gone](gone.md)"), "gone.md"),
    "a link to a heading that does not exist": (
        append("index.md", "[gone](architecture.md#no-such-heading)"),
        "no-such-heading",
    ),
    "a link out of docs/": (append("operator/cli.md", "[up](../../README.md)"), "README.md"),
    "an absolute link": (append("index.md", "[root](/docs/index.md)"), "/docs/index.md"),
    "a page left out of the nav": (add_page, "orphan.md"),
    "a nav entry without its page": (nav_to_nowhere, "gone.md"),
}


def test_the_docs_build(tmp_path: Path) -> None:
    done = build(copy_of_the_docs(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_broken_reference_fails_the_build(tmp_path: Path, breakage: str) -> None:
    config = copy_of_the_docs(tmp_path)
    breaks, named = BREAKAGES[breakage]
    breaks(tmp_path)
    done = build(config)
    assert done.returncode != 0, f"the build passed with {breakage}"
    assert named in done.stderr, done.stderr[-3000:]
