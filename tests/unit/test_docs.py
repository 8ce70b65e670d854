"""The README and the pages under docs/ name only what exists, and all of what they must."""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from pathlib import Path

import pytest

from sokovan.config import PREFIX, Settings
from sokovan.scheduler.handlers import handler_names

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# What a page may call a repository path: a backticked name under one of these folders.
REPO_PATH = re.compile(r"`((?:sokovan|tasks|tests|bench|demo|ops|docs)/[\w./-]*)`")
SETTING = re.compile(rf"{PREFIX}[A-Z0-9_]*[A-Z0-9]")
# The CLI and settings pages show the refusal of this misspelt name on purpose.
MISSPELT_EXAMPLE = "SOKOVAN_REDIS_ULR"
SCENARIO_ID = re.compile(r"SC-([A-Z]+(?:-[A-Z]+)*)-\d+")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def pages() -> list[Path]:
    """Every page: the README and the Markdown under docs/."""
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def page_ids() -> list[str]:
    return [str(p.relative_to(ROOT)) for p in pages()]


def anchors(page: Path) -> set[str]:
    """The ids mkdocs gives a page's headings (Python-Markdown's toc slugs)."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slug = re.sub(r"[^\w\s-]", "", title).strip()
            out.add(re.sub(r"[-\s]+", "-", slug))
    return out


def test_the_settings_page_lists_every_setting() -> None:
    table = (DOCS / "operator" / "settings.md").read_text()
    missing = [
        f"{PREFIX}{f.name.upper()}"
        for f in dataclasses.fields(Settings)
        if f"`{PREFIX}{f.name.upper()}`" not in table
    ]
    assert not missing, f"docs/operator/settings.md does not list {missing}"


@pytest.mark.parametrize("page", pages(), ids=page_ids())
def test_a_page_names_only_settings_that_exist(page: Path) -> None:
    known = {f"{PREFIX}{f.name.upper()}" for f in dataclasses.fields(Settings)}
    unknown = set(SETTING.findall(page.read_text())) - known - {MISSPELT_EXAMPLE}
    assert not unknown, f"{page.relative_to(ROOT)} names settings that do not exist: {unknown}"


@pytest.mark.parametrize("page", pages(), ids=page_ids())
def test_a_page_names_only_repository_paths_that_exist(page: Path) -> None:
    gone = sorted({p for p in REPO_PATH.findall(page.read_text()) if not (ROOT / p).exists()})
    assert not gone, f"{page.relative_to(ROOT)} names paths that do not exist: {gone}"


def test_the_readme_links_only_to_pages_and_headings_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    links = [link for link in MARKDOWN_LINK.findall(readme) if "://" not in link]
    assert links, "the README links nowhere into docs/"
    for link in links:
        path, _, anchor = link.partition("#")
        target = ROOT / path
        assert target.exists(), f"README links to {path}, which does not exist"
        if anchor:
            assert anchor in anchors(target), f"README links to {link}: no such heading"


def test_the_monitoring_page_lists_every_metric() -> None:
    page = (DOCS / "operator" / "monitoring.md").read_text()
    served = set(re.findall(r'"(sokovan_[a-z_]+)"', (ROOT / "sokovan" / "metrics.py").read_text()))
    assert served, "no metric names found in sokovan/metrics.py"
    missing = [m for m in served if f"`{m}`" not in page and f"`{m}_total`" not in page]
    assert not missing, f"docs/operator/monitoring.md does not list the metrics {missing}"


def test_the_monitoring_page_lists_every_alert_rule_and_no_other() -> None:
    rules = set(re.findall(r"- alert: (\w+)", (ROOT / "ops/prometheus/alerts.yml").read_text()))
    page = (DOCS / "operator" / "monitoring.md").read_text()
    listed = set(re.findall(r"^\| `(Sokovan\w+)` \|", page, re.M))
    assert rules, "no alert rules found in ops/prometheus/alerts.yml"
    assert listed == rules, f"alerts.yml has {sorted(rules)}, the page lists {sorted(listed)}"


def test_the_architecture_page_lists_every_handler() -> None:
    page = (DOCS / "architecture.md").read_text()
    listed = set(re.findall(r"^\| `(\w+)` \|", page, re.M))
    assert listed == set(handler_names()), "docs/architecture.md: the handlers table is stale"


def scenario_tests() -> dict[str, set[str]]:
    """Scenario family (TE, TE-INT, ...) -> the test files that carry its ids."""
    found: dict[str, set[str]] = defaultdict(set)
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for family in SCENARIO_ID.findall(path.read_text()):
            found[family].add(str(path.relative_to(ROOT)))
    return found


def scenario_sections() -> dict[tuple[str, ...], set[str]]:
    """Families of each section of the scenarios page -> the test files it lists."""
    text = (DOCS / "scenarios.md").read_text()
    sections: dict[tuple[str, ...], set[str]] = {}
    for section in text.split("\n## ")[1:]:
        header, _, body = section.partition("\n")
        families = tuple(re.findall(r"`SC-([A-Z-]+)`", header))
        assert families, f"scenarios.md: section {header!r} names no family"
        listed = body.partition("**Tests:**")[2].split("\n\n", 1)[0]
        sections[families] = set(re.findall(r"`(tests/[\w/]+\.py)`", listed))
    return sections


def test_the_scenarios_page_has_a_section_for_every_family_the_tests_name() -> None:
    documented = {f for families in scenario_sections() for f in families}
    undocumented = set(scenario_tests()) - documented
    assert not undocumented, f"docs/scenarios.md has no section for {sorted(undocumented)}"


def test_the_scenarios_page_lists_the_test_files_of_each_family() -> None:
    found = scenario_tests()
    for families, listed in scenario_sections().items():
        expected = set().union(*(found.get(f, set()) for f in families))
        assert listed == expected, (
            f"docs/scenarios.md, section {families}: list the tests {sorted(expected)}"
            if expected
            else f"docs/scenarios.md, section {families}: no test carries its ids ('none yet')"
        )
