"""Alembic migrations of the scheduler's schema."""
