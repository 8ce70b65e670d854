"""In-memory stubs of the ports, for unit tests and the test rig: they record what happened.

One module per port (or family of ports) they stand in for; `store` is the SchedulerStore's.
"""
