"""Agent RPC: wire codec, client and pool (callosum over ZeroMQ, msgpack)."""
