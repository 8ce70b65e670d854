"""The Celery edge: app, tasks, canvas, worker signals. Thin: JSON in, domain call, JSON out."""
