"""scheduler/terminator."""
