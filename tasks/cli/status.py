"""`sokovan status`: what is running, where the data lives, whether broker and database answer."""

from __future__ import annotations

import socket
import time
import urllib.request
from typing import Any

import sqlalchemy as sa
import typer

from sokovan import constants as C
from sokovan.bootstrap import redis_primary
from sokovan.config import Settings
from sokovan.db.engine import current_revision
from sokovan.db.listing import status_counts
from sokovan.heartbeats import read_beat
from tasks.cli.common import JsonOption, print_json
from tasks.cli.errors import EXIT_UNREACHABLE
from tasks.cli.root import BROKER_CHECK_SEC, CommandRoot, broker_reachable, root


def _database(r: CommandRoot) -> dict[str, Any]:
    if r.missing_database() is not None:
        # Nothing is there yet: say so without creating the file (status only reads).
        return {"reachable": True, "revision": None, "agents": {}, "exists": False}
    try:
        eng = r.engine(migrated=False)
        revision = current_revision(eng)
        agents = status_counts(eng, ()).agents if revision else {}
    except sa.exc.SQLAlchemyError as e:
        return {"reachable": False, "error": str(e).splitlines()[0]}
    return {"reachable": True, "revision": revision, "agents": agents, "exists": True}


def _workers(r: CommandRoot, broker_up: bool) -> list[str]:
    if not broker_up:
        return []
    try:
        replies = r.app.control.ping(timeout=C.STATUS_PING_TIMEOUT_SEC) or []
    except Exception:  # a broker that stops answering mid-ping: no worker seen
        return []
    return sorted(name for reply in replies for name in reply)


def _schedule_age(s: Settings) -> float | None:
    """Age of this machine's schedule file (informative: beat may run on another machine)."""
    files = sorted(s.var_dir.glob("celerybeat-schedule*"), key=lambda p: p.stat().st_mtime)
    return round(time.time() - files[-1].stat().st_mtime, 1) if files else None


def _beat(r: CommandRoot, broker_up: bool) -> dict[str, Any]:
    """beat is up only while its heartbeat key lives in Valkey (beat rewrites it every 5 s)."""
    doc: dict[str, Any] = {
        "running": False,
        "schedule_age": _schedule_age(r.settings),
        "heartbeat_age": None,
        "host": None,
        "pid": None,
    }
    if not broker_up:
        return doc
    try:
        beat = read_beat(r.redis)
    except Exception:  # a broker that stops answering mid-read: no beat seen
        return doc
    if beat is not None:
        doc.update(running=True, heartbeat_age=round(beat.age, 1), host=beat.host, pid=beat.pid)
    return doc


def _listening(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def _reach(host: str) -> str:
    """Where to connect to a server bound to `host` (any-address binds answer on loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _metrics(s: Settings) -> bool:
    url = f"http://{_reach(s.metrics_host)}:{s.metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def collect(r: CommandRoot) -> dict[str, Any]:
    """Everything `sokovan status` reports, as one JSON-ready document."""
    s = r.settings
    broker_up = broker_reachable(s)
    return {
        "var_dir": str(s.var_dir),
        "database_url": s.effective_database_url,
        "redis_url": s.redis_url,
        # Sentinel mode: the primary the Sentinels name now (null outside it or if none answers).
        "redis_primary": redis_primary(s, timeout=BROKER_CHECK_SEC),
        "embedded_valkey": s.uses_embedded_valkey,
        "broker": {"reachable": broker_up},
        "database": _database(r),
        "workers": _workers(r, broker_up),
        "beat": _beat(r, broker_up),
        "flower": {
            "port": s.flower_port,
            "listening": _listening(_reach(s.flower_host), s.flower_port),
        },
        "metrics": {"port": s.metrics_port, "serving": _metrics(s)},
    }


def _broker_note(doc: dict[str, Any], s: Settings) -> str:
    if s.sentinel is not None:
        primary = doc["redis_primary"] or "none named"
        return (
            f"primary {primary} via Sentinels {','.join(s.redis_sentinels)} ({s.sentinel.master})"
        )
    return str(doc["redis_url"]) + ("  (embedded Valkey)" if doc["embedded_valkey"] else "")


def _yes(flag: bool) -> str:
    return "up" if flag else "DOWN"


def text(doc: dict[str, Any], s: Settings) -> str:
    """The status document as aligned lines for a person."""
    db, beat = doc["database"], doc["beat"]
    if not db.get("exists", True):
        db_note = "no data here yet (run `sokovan up` or `sokovan db upgrade`)"
    elif db["reachable"]:
        db_note = f"revision {db.get('revision') or 'none (run `sokovan db upgrade`)'}"
    else:
        db_note = db["error"]
    if beat["running"]:
        beat_note = (
            f"heartbeat {beat['heartbeat_age']:.0f}s ago from {beat['host']} pid {beat['pid']}"
        )
    elif doc["broker"]["reachable"]:
        beat_note = f"no heartbeat within {C.BEAT_HEARTBEAT_TTL_SEC}s"
    else:
        beat_note = "unknown: the broker is down"
    agents = ", ".join(f"{n} {k}" for k, n in sorted(db.get("agents", {}).items()))
    metrics_url = f"http://{s.metrics_host}:{s.metrics_port}/metrics"
    rows = [
        ("data", "", doc["var_dir"]),
        ("database", _yes(db["reachable"]), f"{doc['database_url']}  {db_note}"),
        (
            "broker",
            _yes(doc["broker"]["reachable"]),
            _broker_note(doc, s),
        ),
        (
            "workers",
            str(len(doc["workers"])) if doc["workers"] else "DOWN",
            " ".join(doc["workers"]) or f"none answered ping within {C.STATUS_PING_TIMEOUT_SEC:g}s",
        ),
        ("beat", _yes(beat["running"]), beat_note),
        ("flower", _yes(doc["flower"]["listening"]), f"http://{s.flower_host}:{s.flower_port}/"),
        ("metrics", _yes(doc["metrics"]["serving"]), metrics_url),
        ("agents", "", agents or "none registered"),
    ]
    return "\n".join(f"{k + ':':<10} {v:<5} {note}".rstrip() for k, v, note in rows)


def status(as_json: bool = JsonOption) -> None:
    """Shows what is running and where the data lives; exit 3 if broker or database is down."""
    r = root()
    s = r.settings
    doc = collect(r)
    if as_json:
        print_json(doc)
    else:
        typer.echo(text(doc, s))
    if not (doc["broker"]["reachable"] and doc["database"]["reachable"]):
        raise typer.Exit(EXIT_UNREACHABLE)
