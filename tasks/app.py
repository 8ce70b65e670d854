"""The Celery application, configured from SOKOVAN_* settings."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from celery import Celery

# Imported with the app, so a worker's main process beats from its boot (worker liveness).
import tasks.nodes  # noqa: F401
from sokovan import constants as C
from sokovan.config import Settings, load_settings
from tasks.consumer import CONSUMER
from tasks.redacted_reprs import PATTERNS_KEY, RedactingAMQP, RedactingTask, install_log_filters
from tasks.signing import setup_signing, signing_config


def broker_settings(settings: Settings) -> dict[str, Any]:
    """Broker and result backend: the Redis URL, or in Sentinel mode Celery's sentinel:// URLs
    with the master's name in both transport options."""
    transport: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout}
    target = settings.sentinel
    if target is None:
        url = settings.redis_url
    else:
        parts = urlsplit(settings.redis_url)
        auth = f"{parts.username or ''}:{parts.password}@" if parts.password else ""
        db = parts.path.strip("/") or "0"
        url = ";".join(f"sentinel://{auth}{h}:{p}/{db}" for h, p in target.addresses)
        transport["master_name"] = target.master
        if target.password:
            transport["sentinel_kwargs"] = {"password": target.password}
    return {
        "broker_url": url,
        "result_backend": url,
        "broker_transport_options": transport,
        "result_backend_transport_options": dict(transport),
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings that follow the project's conventions (see docs/architecture.md)."""
    return {
        **broker_settings(settings),
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        # A task is acknowledged after it ran; a worker lost mid-task gets it redelivered.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        "result_expires": settings.result_expires,
        # No result_extended: it would keep every task's arguments (secrets included) in
        # the result backend for result_expires.
        "result_chord_join_timeout": 30.0,
        # Redis chord counting (not polling); Celery >= 5.7 de-duplicates redelivered parts.
        "task_track_started": True,
        # Events on, so Flower sees sent, started and finished tasks.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        # A Valkey restart of a few seconds is waited out: the consumer reconnects, and
        # publishing and result writes retry for about as long as the domain's clients do.
        "broker_connection_retry_on_startup": True,
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,
        "task_publish_retry_policy": {
            "max_retries": C.REDIS_RETRIES,
            "interval_start": 0,
            "interval_step": C.REDIS_RETRY_BACKOFF_CAP_SEC / 2,
            "interval_max": C.REDIS_RETRY_BACKOFF_CAP_SEC,
        },
        "result_backend_always_retry": True,
        "result_backend_max_retries": C.REDIS_RETRIES,
        "result_backend_max_sleep_between_retries_ms": int(C.REDIS_RETRY_BACKOFF_CAP_SEC * 1000),
        "redis_backend_health_check_interval": C.REDIS_HEALTH_CHECK_SEC,
        "redis_retry_on_timeout": True,
        # Soft shutdown: on a cold shutdown (SIGQUIT, or SIGTERM with REMAP_SIGTERM=SIGQUIT,
        # as the Procfile runs the worker) running tasks get this long to finish; the rest are
        # cancelled and their acks-late messages handed back to the queue at once.
        "worker_soft_shutdown_timeout": settings.soft_shutdown_timeout,
        "worker_enable_soft_shutdown_on_idle": settings.soft_shutdown_on_idle,
        "task_default_queue": C.TASK_QUEUE,
        # beat also writes its heartbeat key; ticks carry their send time (tasks.liveness).
        "beat_scheduler": "tasks.liveness:BeatScheduler",
        PATTERNS_KEY: list(settings.secret_env_patterns),
        # Refused messages are logged by name and id, never by body.
        "worker_consumer": CONSUMER,
        **signing_config(settings),
    }


def create_app(settings: Settings | None = None) -> Celery:
    """Builds the app and registers the tasks."""
    settings = settings or load_settings()
    celery = Celery(
        "sokovan",
        include=[
            "tasks.agent_tasks",
            "tasks.run_tasks",
            "tasks.handler_tasks",
            "tasks.keypair_tasks",
            "tasks.batch_tasks",
            "tasks.read_tasks",
            "tasks.maintenance_tasks",
            "tasks.liveness",
        ],
        amqp=RedactingAMQP,
        task_cls=RedactingTask,
    )
    install_log_filters()
    celery.conf.update(celery_config(settings))
    setup_signing(celery)
    from beat_schedule import beat_schedule

    celery.conf.beat_schedule = beat_schedule(settings)
    return celery


app = create_app()
