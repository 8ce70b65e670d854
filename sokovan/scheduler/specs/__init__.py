"""How the coordinator runs each handler: planning (load targets, call the domain) and
completion (apply the status moves an operation's outcomes call for)."""
