"""sokovan-celery: the session-lifecycle half of a cluster scheduler, on Celery."""

__version__ = "0.1.0"
