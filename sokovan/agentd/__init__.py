"""The reference agent daemon: serves the Backend.AI agent RPC over sim or process kernels.

`agent` holds the RPC methods of one agent, `server` its callosum socket, `runtime`
where kernels live, `faults` and `control` the fault injection, `host` many agents on
one loop with batched presence and registration.
"""
