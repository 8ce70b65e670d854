"""The chaos soak (SC-CV-007): a cluster whose processes are SIGKILLed and restarted, a mixed
workload, and the invariants that must hold once it is calm again (`python -m bench.soak`)."""
