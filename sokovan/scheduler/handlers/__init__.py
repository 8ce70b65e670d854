"""scheduler/handlers."""
