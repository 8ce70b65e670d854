"""The Celery edge is uniform: task names in one module, commands written once."""

from __future__ import annotations

from pathlib import Path

from sokovan.scheduler.handlers import batch_runners, handler_names
from tasks import names
from tasks.commands import beat_args, worker_args, worker_env_prefix

ROOT = Path(__file__).resolve().parents[2]


def _procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(
        (name.strip(), cmd.strip())
        for name, cmd in (ln.split(":", 1) for ln in lines if ln and not ln.startswith("#"))
    )


def test_procfile_worker_and_beat_lines_are_the_commands_written_once() -> None:
    procs = _procfile()
    assert procs["worker"] == " ".join([worker_env_prefix(), "celery", *worker_args()])
    schedule = "${SOKOVAN_VAR_DIR:-$HOME/.local/share/sokovan}/celerybeat-schedule"
    assert procs["beat"] == " ".join(["celery", *beat_args(schedule)])


def test_every_task_name_is_registered_and_every_name_is_in_the_task_reference() -> None:
    from tasks.app import app

    app.loader.import_default_modules()
    registered = set(app.tasks)
    internal = {names.RUN_COMPLETE, names.RUN_FAIL, names.KEYPAIRS_GENERATE, names.KEYPAIRS_REFILL}
    internal |= {names.agent_task(op) for op in batch_runners()}
    assert set(names.PUBLIC) | internal <= registered
    # SC-OP-010: one task per declared handler, named after it (Flower shows which ran).
    assert {names.handler_task(h) for h in handler_names()} <= registered
    reference = (ROOT / "docs" / "reference" / "tasks.md").read_text()
    for name in (*names.PUBLIC, *internal):
        assert f"`{name}`" in reference, name
