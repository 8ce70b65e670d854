"""Redis key names, and the values several modules share, each with why it has that value."""

from __future__ import annotations

from typing import Final

# Presence hash per kernel; the same key and fields as Backend.AI agents write.
PRESENCE_KEY_PREFIX: Final = "kernel:presence:"
# Agents refresh RUNNING kernels well inside this; a missing refresh lets the hash lapse.
PRESENCE_TTL_SEC: Final = 300
# Backend.AI's threshold: no refresh for two minutes means the kernel looks stale.
PRESENCE_STALE_AFTER_SEC: Final = 120
# How often an agent rewrites presence for its RUNNING kernels: Backend.AI agents' 60 s,
# half the stale threshold, so one late refresh never makes a kernel look stale.
PRESENCE_REFRESH_SEC: Final = 60
# Backend.AI keeps presence in its "live" database, db 2 of its Valkey, agents and manager alike.
PRESENCE_DB: Final = 2
# Per-agent key the manager sets on every sweep; a real agent's orphan cleanup reads it.
AGENT_LAST_CHECK_KEY_PREFIX: Final = "agent:last_check:"
# Backend.AI's lifetime of that key: twice the orphan threshold, so one missed sweep is harmless.
AGENT_LAST_CHECK_TTL_SEC: Final = 1200
# Kernels per presence read in stage 1 of the sweep: one round trip each, small enough that
# neither Valkey (busy in one script) nor the worker (holding the replies) feels a large sweep.
PRESENCE_PAGE_SIZE: Final = 10_000

# Handler claims: one run per handler at a time, released by the run's completion.
CLAIM_KEY_PREFIX: Final = "sokovan:claim:"
# Outer bound: a run still `running` past this is abandoned even if its lease is renewed.
RUN_DEADLINE_SEC: Final = 900
# Worker liveness (sokovan.scheduler.leases): node name -> its current incarnation.
NODE_KEY_PREFIX: Final = "sokovan:node:"
# Incarnation -> "1" while that worker's tree lives; its lapse means the holder is gone.
ALIVE_KEY_PREFIX: Final = "sokovan:alive:"
# Lease token -> {incarnation: pieces of the run's work it is doing now}.
LEASE_HOLDERS_PREFIX: Final = "sokovan:lease-holders:"
# Run id -> {incarnation: its agent batches a worker took and has not finished}: counted on
# receipt, before any process runs them, so a batch lost with its worker is never unseen.
RUN_HOLDERS_PREFIX: Final = "sokovan:run-holders:"
# A worker's main process rewrites its liveness key this often, from a thread of its own.
NODE_BEAT_SEC: Final = 1.0
# The holders of a lease are forgotten after this, far past any run's deadline.
LEASE_HOLDERS_TTL_SEC: Final = 2 * RUN_DEADLINE_SEC

# Reference agents register here so the scheduler and tests can find them.
AGENT_REGISTRY_KEY: Final = "sokovan:agents"
AGENT_CONTROL_PREFIX: Final = "sokovan:agentd:"
# How often a reference agent reads fault operations queued for it in Redis: quick for tests.
AGENT_CONTROL_POLL_SEC: Final = 0.2

# Backend.AI bounds one session's start so a hung agent does not hold it forever.
START_SESSION_TIMEOUT_SEC: Final = 60
# One agent RPC; long enough for create_kernels on a busy agent.
AGENT_CALL_TIMEOUT_SEC: Final = 30.0
# Worker processes a worker starts by default (`sokovan up`, the Procfile, the benchmarks).
# Twice the cores of the 2-core machines measured: an agent batch task waits on its agent,
# Valkey and SQL for more than half its time (25 ms of CPU in 60 ms of a destroy batch), so
# two processes left both cores 30 % idle; terminating 10,000 kernels took 4.3 s with 2, 4.0
# with 4. Each process holds about 120 MiB.
WORKER_CONCURRENCY: Final = 4
# destroy_kernel calls in flight per agent inside one task. The original design sends every
# kernel's call at once; 64 still bounds one agent, yet an agent's batch of 100 takes two
# rounds of its latency instead of seven (10,000 kernels / 100 agents: 6.5 s -> 5.3 s here).
DESTROY_CONCURRENCY_PER_AGENT: Final = 64
# check_running calls in flight per agent during stage 2 of the sweep. An agent answers one
# from its kernel registry (no container runtime call), so a dead agent's many suspects may
# be asked briskly: 500 of them at 5 ms each take 0.08 s at 32, 0.31 s at 8.
CHECK_RUNNING_CONCURRENCY_PER_AGENT: Final = 32
# A sweep that finds more than this share of kernels stale kills nothing: it is an outage.
SWEEP_MAX_STALE_RATIO: Final = 0.5
# Fewer candidates than this are judged on their own, whatever the share.
SWEEP_BRAKE_MIN_KERNELS: Final = 10
# Above the ratio, a run still reaps kernels their agents confirm dead, at most this share of
# the group (at least one): a whole-cluster restart clears in about five sweeps, and a mass of
# wrong "not running" answers costs a fifth of the kernels per sweep interval at most.
SWEEP_BRAKE_REAP_SHARE: Final = 0.2

# A kernel on an agent that restarted after the kernel's last presence is a suspect at once,
# not STALE_AFTER later. Presence stamps are whole seconds and a reference agent writes its
# kernels' presence as it starts, before it serves: a stamp this close before the start may be
# the new instance's own.
AGENT_RESTART_GRACE_SEC: Final = 2.0

# Default beat intervals (seconds).
SWEEP_INTERVAL_SEC: Final = 60.0
LAUNCH_INTERVAL_SEC: Final = 5.0


# Redis visibility timeout must exceed the longest task or it is redelivered while running.
BROKER_VISIBILITY_TIMEOUT_SEC: Final = 3600
# Poison messages. A counter per task message, counted each time a worker starts it.
DELIVERY_KEY_PREFIX: Final = "sokovan:deliveries:"
# A counter outlives redeliveries after the visibility timeout; finished tasks delete theirs.
DELIVERY_COUNT_TTL_SEC: Final = 86400
# Characters of a dead letter's arguments shown to a person.
DEADLETTER_ARGS_REPR_CHARS: Final = 500


# Agent liveness. Every agent, registered by hand or self-announced, is pinged this often.
AGENT_PING_INTERVAL_SEC: Final = 10.0
# One ping's bound: an agent slower than this to say `health` counts as not answering.
AGENT_PING_TIMEOUT_SEC: Final = 5.0
# No answer for this long: UNREACHABLE (no new kernels); three missed pings, not one blip.
AGENT_UNREACHABLE_AFTER_SEC: Final = 30.0
# No answer for this long: LOST. Two minutes, Backend.AI's stale threshold for presence too.
AGENT_LOST_AFTER_SEC: Final = 120.0
# After an agent turned LOST, its kernels wait this long before they take the deadline path
# (AGENT_LOST): a rebooting node gets time to come back with its containers.
AGENT_LOST_GRACE_SEC: Final = 300.0
# status_info of sessions ended by a drain of their agent.
AGENT_DRAINED_REASON: Final = "AGENT_DRAINED"
# A drain's deadline when none is given: ten minutes, kubectl drain's habit of a bounded wait.
DRAIN_DEADLINE_SEC: Final = 600.0


SSH_KEY_COMMENT: Final = "work@cluster.backend.ai.local"

# Cluster SSH keys: RSA of this size, generated once per session start.
SSH_KEY_BITS: Final = 2048
# Socket timeout of those clients: a broker on this machine or the LAN answers in milliseconds.
PROCESS_REDIS_TIMEOUT_SEC: Final = 2.0
# Reconnect attempts of one Redis call: with the backoff below they span about 11 s, so a
# Valkey restart of a few seconds is waited out instead of failing a run.
REDIS_RETRIES: Final = 14
# Longest pause between two reconnect attempts: a restarted server is found within it.
REDIS_RETRY_BACKOFF_CAP_SEC: Final = 1.0
# A pooled connection idle this long is PINGed before use, so one the server closed while
# it sat in the pool is replaced instead of failing the call that picks it up.
REDIS_HEALTH_CHECK_SEC: Final = 15
# Sessions one create_kernels task carries at most: their keypairs (~35 ms of CPU each) and
# calls fit well inside the start timeout, and a large run's sessions reach RUNNING in steps.
CREATE_SESSIONS_PER_TASK: Final = 200


# A sample of a wrong-shaped reply quoted in the error: enough to recognise it.
REPLY_SAMPLE_MAX_BYTES: Final = 200
# Backstop for error text stored in outcomes and status data: room for an agent's text,
# already cut to AGENT_TEXT_MAX_BYTES, plus our own context around it.
STORED_ERROR_MAX_BYTES: Final = 4096

# Admission: bounds of the public task payloads, so a hostile or mistaken request is refused
# before it costs memory, a column overflow or an agent call.
# Kernels per session unless SOKOVAN_MAX_KERNELS_PER_SESSION says otherwise; one agent batch
# of this size stays well inside the start timeout.
MAX_KERNELS_PER_SESSION: Final = 64

# Secrets in session environments. A variable whose name contains one of these (any case)
# is secret: kept encrypted at rest, never put in a task message, result, log or event.
DEFAULT_SECRET_ENV_PATTERNS: Final = (
    "TOKEN",
    "PASSWORD",
    "PASSWD",
    "SECRET",
    "KEY",
    "CREDENTIAL",
    "PRIVATE",
    "AUTH",
    "COOKIE",
)
# Task argument fields whose values are secret whatever their name says.
SECRET_FIELD_NAMES: Final = frozenset({"ssh_keypair", "private_key", "password", "secret_environ"})
# What a secret value looks like in a repr, an event or Flower.
REDACTED: Final = "***"
# Task-signing certificates of `sokovan certs init` are valid for a year (Celery refuses
# messages once one has expired).
SIGNING_CERT_DAYS: Final = 365

# Operators' tools (`sokovan up`, `status`, the exporter).
# Prometheus exporter: loopback by default, since the ledger is not for the whole network.
METRICS_HOST: Final = "127.0.0.1"
# Redis list a worker moves a task to after too many deliveries; the exporter reports its length.
DEADLETTER_KEY: Final = "sokovan:deadletter"
# Celery inspect ping in `sokovan status`: short, a healthy worker answers in milliseconds.
STATUS_PING_TIMEOUT_SEC: Final = 1.0
# Liveness keys in Valkey: beat and each worker rewrite theirs while they run; the TTL lets a
# process that is gone disappear within it (`sokovan status`, the exporter's gauges).
BEAT_HEARTBEAT_KEY: Final = "sokovan:beat:heartbeat"
BEAT_HEARTBEAT_TTL_SEC: Final = 30
# A worker's key, rewritten on each Celery event heartbeat (every 2 s).
WORKER_HEARTBEAT_KEY_PREFIX: Final = "sokovan:worker:heartbeat:"
# Message headers beat's ticks carry: when beat sent the tick and the entry's interval. A tick
# older than its interval (plus tasks.liveness's slack) is dropped quietly by the task: the next
# one replaces it, and Flower shows it SUCCESS (no `expires`, which showed up as REVOKED).
TICK_AT_HEADER: Final = "sokovan_tick_at"
TICK_EVERY_HEADER: Final = "sokovan_tick_every"

# Sessions one `sokovan.sessions.create` message may carry: a burst of this size is one
# task and one pull run; its result (ids and refusals) stays well under a megabyte.
SESSION_BATCH_MAX: Final = 1000

# Cluster keypair pool. Keys waiting by default: a burst of this many sessions finds its
# keys made (about 2.8 KB of SQL per RSA key, ~35 ms of CPU each to make ahead of time).
KEYPAIR_POOL_SIZE: Final = 1000
# With more sessions than this on their way to RUNNING, the refill waits: the burst makes
# its keys on demand, and refilling at the same time would only slow it.
KEYPAIR_REFILL_DEFER_BACKLOG: Final = 50
# Beat interval of the refill: an idle cluster is back to a full pool within a minute or so.
KEYPAIR_REFILL_INTERVAL_SEC: Final = 30.0
# One refill wave at a time: the mark's lifetime is an estimate of the wave's length, so a
# lost wave is retried once it lapses.
KEYPAIR_REFILL_MARK_KEY: Final = "sokovan:keypairs:refilling"
# A refill deferred by a burst looks again this much later (one recheck at a time), so the
# pool refills soon after the burst without waiting for the beat tick.
KEYPAIR_RECHECK_KEY: Final = "sokovan:keypairs:recheck"
KEYPAIR_RECHECK_SEC: Final = 5

# The queue every task is sent to and every worker consumes (tasks.commands.QUEUE).
TASK_QUEUE: Final = "sokovan"

# The session status feed (README, "A manager's view"): one Redis stream entry per session
# status move, on the broker's server.
STATUS_STREAM_KEY: Final = "sokovan:session-status"
# Version of the entry's field format; a consumer checks it (field `v`).
STATUS_STREAM_FORMAT: Final = "1"


# Kernel logs (`session logs`, the agents' get_logs): at most this much text, the tail kept.
KERNEL_LOGS_MAX_BYTES: Final = 1 << 20
KERNEL_LOGS_DEFAULT_TAIL: Final = 100

# Reclaim (sokovan.scheduler.reclaim): idle and over-age sessions give their resources back.
# Backend.AI's kernel statistics live in the "stat" database, db 0, one key per kernel id.
KERNEL_STATS_DB: Final = 0
# How often the reference agent writes its kernels' statistics: Backend.AI's stat interval.
KERNEL_STATS_INTERVAL_SEC: Final = 5.0
# Last activity per session (the reclaim handler's busy reads and sokovan.session.touch).
ACTIVITY_KEY_PREFIX: Final = "sokovan:activity:"
# Termination reasons of reclaimed sessions (Backend.AI's idle checkers' names).
LIFETIME_EXCEEDED_REASON: Final = "LIFETIME_EXCEEDED"
IDLE_TIMEOUT_REASON: Final = "IDLE_TIMEOUT"
# A process kernel's environ variable (not a setting): "busy" runs a CPU loop instead of sleeping.
KERNEL_LOAD_ENV: Final = "REFERENCE_KERNEL_LOAD"
