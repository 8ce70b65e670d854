"""`make demo` (`python -m demo`): the whole lifecycle on the embedded defaults."""
