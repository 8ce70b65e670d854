"""Signed task messages (Celery's `auth` serializer) and a consumer that never logs a body.

With signing configured every message this app sends is signed with the key, and the
worker accepts only `auth` messages that a certificate of the trusted store verifies.
A refused message is logged once with its task name and id and dropped; the worker goes on.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals, states
from celery.exceptions import InvalidTaskError, NotRegistered
from celery.utils.objects import Bunch
from celery.worker.consumer import Consumer

from sokovan.config import Settings
from sokovan.signing_files import signing_files

log = logging.getLogger(__name__)


def signing_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for signed messages; empty when signing is not configured."""
    files = signing_files(settings)
    if files is None:
        return {}
    return {
        "task_serializer": "auth",
        "accept_content": ["auth"],
        # Results and events stay JSON; they are read by our own processes and Flower.
        "result_accept_content": ["json"],
        "security_key": str(files.key),
        "security_certificate": str(files.cert),
        "security_cert_store": str(files.store),
        "security_digest": "sha256",
    }


def setup_signing(celery: Celery) -> None:
    """Registers the auth serializer with the app's key when signing is configured."""
    if celery.conf.task_serializer == "auth":
        # JSON stays decodable for the worker's control and event channels.
        celery.setup_security(allowed_serializers=["json"])


def _describe(message: Any, exc: BaseException) -> tuple[str, str, str]:
    headers = message.headers if isinstance(message.headers, dict) else {}
    return str(headers.get("task", "?")), str(headers.get("id", "?")), type(exc).__name__


class QuietConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, but a message it cannot accept is logged without its body.

    Celery's own handlers print the whole body (secrets included) of an invalid,
    undecodable, unknown or unregistered message; unsigned and wrongly signed ones land
    here too. Each is logged once by name and id and dropped, and its sender gets a FAILURE
    result saying why (never silence; a result already stored for that id is kept).
    """

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        name, task_id, reason = _describe(message, exc)
        log.warning(
            "refused task message %s[%s]: %s (not signed, or malformed)", name, task_id, reason
        )
        message.reject_log_error(log, self.connection_errors)
        self._answer_refused(message, exc)
        signals.task_rejected.send(sender=self, message=message, exc=exc)

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        name, task_id, reason = _describe(message, exc)
        log.warning(
            "refused task message %s[%s]: %s (signature not trusted, or body unreadable)",
            name,
            task_id,
            reason,
        )
        message.ack()
        self._answer_refused(message, exc)

    def _answer_refused(self, message: Any, exc: BaseException) -> None:
        """Stores a FAILURE result for a refused message, so its sender is not left waiting.

        The failure names the task and why (content type not accepted, not signed by a
        trusted key, unreadable), never the body. A result already stored for that id is
        left alone: a forged message cannot overwrite a real task's answer.
        """
        headers = message.headers if isinstance(message.headers, dict) else {}
        task_id = headers.get("id")
        if not isinstance(task_id, str) or not task_id or len(task_id) > 255:
            return
        name = str(headers.get("task", "?"))[:200]
        try:
            backend = self.app.backend
            if backend.get_state(task_id) != states.PENDING:
                return
            request = Bunch(
                name=name,
                chord=None,
                root_id=headers.get("root_id"),
                correlation_id=message.properties.get("correlation_id"),
                reply_to=message.properties.get("reply_to"),
                errbacks=None,
                ignore_result=False,
            )
            error = _refusal_error(exc, f"{name}: {self._why(message)}")
            backend.mark_as_failure(task_id, error, request=request)
        except Exception as e:  # the refusal stands either way; the sender times out
            log.warning("refused task message %s[%s]: no failure stored: %s", name, task_id, e)

    def _why(self, message: Any) -> str:
        content_type = str(getattr(message, "content_type", "") or "?")[:100]
        accepted = sorted(self.app.conf.accept_content or [])
        if self.app.conf.task_serializer == "auth":
            if content_type != "application/data":  # the auth serializer's content type
                return (
                    f"refused: an unsigned message ({content_type}); this cluster accepts only "
                    "messages signed by a trusted key (serializer 'auth', README)"
                )
            return "refused: the signature is not by a key this cluster trusts, or is broken"
        return (
            f"refused: content type {content_type} is not accepted; "
            f"this cluster accepts {', '.join(accepted)} (send JSON)"
        )

    def on_unknown_message(self, body: Any, message: Any) -> None:
        name, task_id, _ = _describe(message, Exception())
        log.warning("refused message %s[%s]: not a task message", name, task_id)
        message.reject_log_error(log, self.connection_errors)
        signals.task_rejected.send(sender=self, message=message, exc=None)

    def on_unknown_task(self, body: Any, message: Any, exc: BaseException) -> None:
        name, task_id, _ = _describe(message, exc)
        log.warning("refused task message %s[%s]: no such task here", name, task_id)
        message.reject_log_error(log, self.connection_errors)
        headers = message.headers if isinstance(message.headers, dict) else {}
        if "id" in headers:
            # As Celery does: the sender waiting on the result learns the task is unknown.
            request = Bunch(
                name=name,
                chord=None,
                root_id=headers.get("root_id"),
                correlation_id=message.properties.get("correlation_id"),
                reply_to=message.properties.get("reply_to"),
                errbacks=None,
            )
            self.app.backend.mark_as_failure(task_id, NotRegistered(name), request=request)
        if self.event_dispatcher:
            self.event_dispatcher.send(
                "task-failed", uuid=task_id, exception=f"NotRegistered({name!r})"
            )
        signals.task_unknown.send(sender=self, message=message, exc=exc, name=name, id=task_id)


def _refusal_error(exc: BaseException, text: str) -> BaseException:
    """An exception of the refusal's kind (a Celery or kombu type a sender can load)."""
    kind = type(exc)
    if kind.__module__.split(".")[0] in ("celery", "kombu"):
        try:
            error: BaseException = kind(text)
            return error
        except Exception:
            pass
    fallback: BaseException = InvalidTaskError(text)
    return fallback
