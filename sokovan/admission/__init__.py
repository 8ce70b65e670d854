"""Admission: public payload schemas, their refusals, and the public tasks' bodies."""
