"""scheduler/launcher."""
