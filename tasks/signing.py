"""Signed task messages (Celery's `auth` serializer) and a consumer that never logs a body.

With signing configured every message this app sends is signed with the key, and the
worker accepts only `auth` messages that a certificate of the trusted store verifies.
A refused message is logged once with its task name and id and dropped; the worker goes on.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals
from celery.worker.consumer import Consumer

from sokovan.config import Settings
from sokovan.signing import signing_files

log = logging.getLogger(__name__)

CONSUMER = "tasks.signing:QuietConsumer"


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

    Celery's own handlers print the whole body (secrets included) of an invalid or
    undecodable message; an unsigned or wrongly signed message lands here too.
    """

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        name, task_id, reason = _describe(message, exc)
        log.warning(
            "refused task message %s[%s]: %s (not signed, or malformed)", name, task_id, reason
        )
        message.reject_log_error(log, self.connection_errors)
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
