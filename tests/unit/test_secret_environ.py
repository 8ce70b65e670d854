"""Secret environ values: which names are secret, redacted reprs, the encrypted store."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from sokovan.config import load_settings
from sokovan.constants import REDACTED
from sokovan.db.repository import SchedulerRepository
from sokovan.db.schema import environ_secrets
from sokovan.db.secret_environ import SqlSecretEnviron
from sokovan.errors import InvalidRequest
from sokovan.records import SessionRequest
from sokovan.redaction import is_secret_name, is_secret_ref, redact, split_environ
from sokovan.scheduler.submit import submit_session
from sokovan.types import AgentId, ImageConfig, ResourceSlot, SessionId, SessionStatus
from tasks.redacted_reprs import PoolApplyFilter, RedactingAMQP, redacted_repr
from tests.services import leaks


def test_secret_names_follow_the_patterns_in_any_case() -> None:
    assert is_secret_name("API_TOKEN") and is_secret_name("db_password")
    assert is_secret_name("AWS_SECRET_ACCESS_KEY") and is_secret_name("GitHubCredential")
    assert not is_secret_name("PATH") and not is_secret_name("PLAIN")
    assert is_secret_name("MY_PIN", ["PIN"]) and not is_secret_name("API_TOKEN", ["PIN"])


def test_settings_read_the_patterns_as_a_list() -> None:
    settings = load_settings({"SOKOVAN_SECRET_ENV_PATTERNS": "token, pin;PASS"}, dotenv=None)
    assert settings.secret_env_patterns == ("token", "pin", "PASS")


def test_redact_hides_secret_environ_values_declared_fields_and_references() -> None:
    """Task arguments as a repr shows them: environ secrets, secret fields, references."""
    kwargs: dict[str, Any] = {
        "request": {
            "image": "img",
            "environ": {"API_TOKEN": "s3cr3t", "PLAIN": "ok", "X": "sokovan-secret-ref:abc"},
            "password": "hunter2",
        },
        "items": [{"cluster_info": {"ssh_keypair": {"private_key": "PEM"}}}],
    }
    shown = redact(kwargs)
    assert shown["request"]["environ"] == {"API_TOKEN": REDACTED, "PLAIN": "ok", "X": REDACTED}
    assert shown["request"]["password"] == REDACTED and shown["request"]["image"] == "img"
    assert shown["items"][0]["cluster_info"]["ssh_keypair"] == REDACTED
    text = redacted_repr(kwargs)
    assert "s3cr3t" not in text and "hunter2" not in text and "PEM" not in text
    assert kwargs["request"]["environ"]["API_TOKEN"] == "s3cr3t"  # the arguments are untouched


def test_messages_of_the_app_carry_redacted_reprs_and_sent_events(tmp_path: Path) -> None:
    from tasks.app import create_app

    app = create_app(load_settings({"SOKOVAN_VAR_DIR": str(tmp_path)}, dotenv=None))
    assert isinstance(app.amqp, RedactingAMQP)
    request = {"image": "img", "environ": {"API_TOKEN": "s3cr3t"}}
    message = app.amqp.create_task_message(
        "id-1", "sokovan.session.create", (), {"request": request}, create_sent_event=True
    )
    assert "s3cr3t" not in message.headers["kwargsrepr"]
    assert "s3cr3t" not in repr(message.sent_event)
    assert "s3cr3t" in repr(message.body)  # the task itself still gets its arguments
    assert app.conf.result_extended is False


def test_every_task_of_the_app_redacts_its_worker_reprs() -> None:
    """A task base class that dropped the redacting request would show secrets in events."""
    from celery.utils.imports import symbol_by_name

    from tasks.app import app
    from tasks.redacted_reprs import RedactingRequest

    app.loader.import_default_modules()
    ours = [t for name, t in app.tasks.items() if name.startswith("sokovan.")]
    assert len(ours) >= 10
    for task in ours:
        assert issubclass(symbol_by_name(task.Request), RedactingRequest), task.name


def test_pool_apply_debug_line_keeps_only_the_task_name_and_id() -> None:
    import logging

    record = logging.LogRecord(
        "celery.pool", logging.DEBUG, __file__, 1, "TaskPool: Apply %s (args:%s kwargs:%s)",
        ("<fn>", "('sokovan.session.create', 'id-1', {'kwargs': {'x': 's3cr3t'}}, b'...')", "{}"),
        None,
    )  # fmt: skip
    assert PoolApplyFilter().filter(record)
    assert record.getMessage() == "TaskPool: Apply sokovan.session.create[id-1]"


def _store(engine: sa.Engine) -> SqlSecretEnviron:
    return SqlSecretEnviron(engine, Fernet.generate_key())


def test_stash_then_bind_stores_only_ciphertext_and_returns_clear_part(engine: sa.Engine) -> None:
    """The client stashes, the submission binds; SQL holds the value only encrypted."""
    store = _store(engine)
    sent = store.stash({"API_TOKEN": "s3cr3t", "PLAIN": "ok"}, {"DB_URL": "pg://u:pw@h"})
    assert sent["PLAIN"] == "ok"
    assert is_secret_ref(sent["API_TOKEN"]) and is_secret_ref(sent["DB_URL"])
    sid = SessionId(uuid.uuid4())
    assert store.bind(sid, sent) == {"PLAIN": "ok"}
    assert store.environs([sid]) == {sid: {"API_TOKEN": "s3cr3t", "DB_URL": "pg://u:pw@h"}}
    with engine.connect() as conn:
        rows = [repr(tuple(r)) for r in conn.execute(sa.select(environ_secrets))]
    assert len(rows) == 2 and not [r for r in rows if leaks(r, "s3cr3t") or "pw@h" in r]


def test_a_reference_binds_once_and_an_unknown_one_is_refused(engine: sa.Engine) -> None:
    store = _store(engine)
    sent = store.stash({"API_TOKEN": "s3cr3t"})
    store.bind(SessionId(uuid.uuid4()), sent)
    with pytest.raises(InvalidRequest) as used:
        store.bind(SessionId(uuid.uuid4()), sent)
    assert used.value.field == "environ.API_TOKEN"
    with pytest.raises(InvalidRequest) as unknown:
        store.bind(SessionId(uuid.uuid4()), {"OTHER": "sokovan-secret-ref:nope"})
    assert unknown.value.field == "environ.OTHER"


def test_discard_removes_only_unbound_secrets(engine: sa.Engine) -> None:
    store = _store(engine)
    bound = store.stash({"A_TOKEN": "1"})
    store.bind(SessionId(uuid.uuid4()), bound)
    unbound = store.stash({"B_TOKEN": "2"})
    assert store.discard({**bound, **unbound}) == 1
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(environ_secrets)).scalar() == 1


def test_inline_secrets_of_a_raw_request_are_bound_encrypted_at_submission(
    engine: sa.Engine,
) -> None:
    """A raw sender's clear secret never lands in sessions.environ."""
    repo = SchedulerRepository(engine)
    repo.add_image(ImageConfig(canonical="img"))
    from sokovan.records import AgentRow

    repo.upsert_agent(
        AgentRow(
            AgentId("a1"),
            "tcp://127.0.0.1:1",
            capacity=ResourceSlot.from_json({"cpu": 4, "mem": 2**32}),
        )
    )
    store = _store(engine)
    request = SessionRequest(image="img", environ={"API_TOKEN": "s3cr3t", "A": "b"})
    sid = submit_session(repo, request, store).session_id
    assert repo.get_session(sid).environ == {"A": "b"}
    assert store.environs([sid]) == {sid: {"API_TOKEN": "s3cr3t"}}
    with pytest.raises(InvalidRequest) as refused:
        submit_session(repo, request)  # no store: refused, not stored in clear
    assert refused.value.field == "environ.API_TOKEN"


def test_split_environ_treats_references_as_secret_whatever_the_name() -> None:
    clear, secret = split_environ({"X": "sokovan-secret-ref:1", "Y": "2", "MY_KEY": "3"})
    assert clear == {"Y": "2"} and secret == {"X": "sokovan-secret-ref:1", "MY_KEY": "3"}


def test_prune_drops_secrets_of_terminated_sessions_and_old_unbound_ones(
    engine: sa.Engine,
) -> None:
    repo = SchedulerRepository(engine)
    store = _store(engine)
    running, done, cancelled = (SessionId(uuid.uuid4()) for _ in range(3))
    for sid, status in (
        (running, SessionStatus.RUNNING),
        (done, SessionStatus.TERMINATED),
        (cancelled, SessionStatus.CANCELLED),
    ):
        repo.create_session(session_id=sid, name=str(sid), kernels_=[], status=status)
        store.bind(sid, store.stash({"API_TOKEN": str(sid)}))
    fresh = store.stash({"NEW_TOKEN": "1"})
    assert store.prune(unbound_ttl=3600) == 2
    assert store.environs([running, done, cancelled]) == {running: {"API_TOKEN": str(running)}}
    assert store.prune(unbound_ttl=-1) == 1  # the unbound one, once past the TTL
    with pytest.raises(InvalidRequest):
        store.bind(SessionId(uuid.uuid4()), fresh)


def test_a_refused_secret_value_is_not_echoed() -> None:
    """A schema refusal quotes a prefix of the bad value, except a secret's."""
    from sokovan.admission.parse import parse_create
    from sokovan.admission.refusal import Refusal
    from sokovan.admission.schemas import Limits

    for name in ("API_TOKEN", "PLAIN"):
        refused = parse_create({"image": "img", "environ": {name: "s3cr3t\x00"}}, Limits())
        assert isinstance(refused, Refusal) and refused.field == f"environ.{name}"
        assert ("s3cr3t" in refused.error) is (name == "PLAIN"), refused.error


def test_reprs_of_large_arguments_show_a_redacted_head_without_walking_the_rest() -> None:
    """A batch of 10,000 items shows its first ones, redacted, and says how many more; an
    item beyond the head is never read, and a secret in the head is still hidden."""

    class Untouchable(dict[str, str]):
        def items(self) -> Any:
            raise AssertionError("an item past the shown head was walked")

    items: list[Any] = [{"kernel_id": f"k{i}", "password": "hunter2"} for i in range(100)]
    items += [Untouchable() for _ in range(9900)]
    text = redacted_repr((1, "a1", items))
    assert "k0" in text and "hunter2" not in text
    assert "more" in text
    assert len(text) <= 1024 + 16
