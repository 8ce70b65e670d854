"""The figures of bench.launch: its bursts and baselines set side by side, with notes."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import psutil

from bench.harness import Figure, lost_note, mib


@dataclass(frozen=True, slots=True)
class Bursts:
    """What each burst and baseline measured, and the CPU one key took per key type."""

    warm: dict[str, float]
    cold: dict[str, float]
    each: dict[str, float]
    base: dict[str, float]
    bare: dict[str, float]
    ed25519: dict[str, float] | Exception | None
    key_cpu: dict[str, float]


def floor_of(args: argparse.Namespace, cpu_per_key: float) -> float:
    """Seconds the keys of one burst take at least, every core making keys."""
    return float(args.sessions * cpu_per_key / (psutil.cpu_count() or 1))


def figures(
    args: argparse.Namespace, b: Bursts, fill: float, running: int, target: int
) -> list[Figure]:
    warm, cold, each, base, bare = b.warm, b.cold, b.each, b.base, b.bare
    label = f"launch {args.sessions:,} sessions / {args.agents} agents, {args.latency_ms:g} ms"
    rsa_floor = floor_of(args, b.key_cpu["rsa"])
    ed_floor = floor_of(args, b.key_cpu["ed25519"])
    note = (
        f"{_losses('ours (warm pool)', warm, args)}; {_losses('ours (cold pool)', cold, args)}; "
        f"{_losses('ours (warm pool, one message per session)', each, args)}; "
        f"{_losses('baseline', base, args)}; {_losses('no-keypair baseline', bare, args)}; "
        f"{running} RUNNING; a pool of {target} keys filled in {fill:.1f} s by the workers; "
        f"tasks sent for one submission of {args.sessions}: {warm['tasks']:.0f} (warm), "
        f"{cold['tasks']:.0f} (cold), {each['tasks']:.0f} with one message per session; "
        f"sending took "
        f"{warm['sending']:.2f} s; worker peak RSS {mib(warm['rss']):.0f} MiB tree, "
        f"{mib(warm['rss_process']):.0f} MiB largest process; baseline = keypair + "
        f"create_kernels per session as Backend.AI does; without keypairs the baseline's "
        f"p50/p99 are {bare['p50']:.2f}/{bare['p99']:.2f} s ({bare['rate']:.0f} sessions/s); "
        f"one key takes {b.key_cpu['rsa'] * 1000:.1f} ms of CPU (RSA-2048), "
        f"{b.key_cpu['ed25519'] * 1000:.2f} ms (Ed25519): {args.sessions:,} keys on "
        f"{psutil.cpu_count()} cores take at least {rsa_floor:.2f} s (RSA), "
        f"{ed_floor:.3f} s (Ed25519); 1-minute load at each burst: "
        f"baseline {base['load']:.1f}, no-keypair baseline {bare['load']:.1f}, "
        f"warm {warm['load']:.1f}, one message per session {each['load']:.1f}, "
        f"cold {cold['load']:.1f}{_ed_load(b.ed25519)}"
    )
    figures = [
        Figure(
            f"{label}: sessions/s, warm pool",
            warm["rate"],
            base["rate"],
            "1/s",
            better="higher",
            note=note,
        ),
        Figure("launch: p50 submit -> RUNNING, warm pool", warm["p50"], base["p50"], "s"),
        Figure("launch: p99 submit -> RUNNING, warm pool", warm["p99"], base["p99"], "s"),
        Figure("launch: p50 submit -> RUNNING, cold pool", cold["p50"], base["p50"], "s"),
        Figure("launch: p99 submit -> RUNNING, cold pool", cold["p99"], base["p99"], "s"),
        Figure("launch: p99 warm pool / no-keypair baseline", warm["p99"], bare["p99"], "s"),
        Figure("launch: p99 cold RSA pool / key generation floor", cold["p99"], rsa_floor, "s"),
        Figure("launch: p99 warm pool, one message per session", each["p99"], base["p99"], "s"),
    ]
    if isinstance(b.ed25519, Exception):
        figures.append(Figure.failure("launch: p99 cold pool, Ed25519 keys", b.ed25519))
    elif b.ed25519 is not None:
        ed = b.ed25519
        figures.append(
            Figure(
                "launch: p99 cold pool, Ed25519 keys / no-keypair baseline",
                ed["p99"],
                bare["p99"],
                "s",
                note=f"{_losses('ours (cold pool, Ed25519)', ed, args)}; its p50 "
                f"{ed['p50']:.2f} s, {ed['rate']:.0f} sessions/s, load {ed['load']:.1f}",
            )
        )
    return figures


def _ed_load(ed: dict[str, float] | Exception | None) -> str:
    return f", cold Ed25519 {ed['load']:.1f}" if isinstance(ed, dict) else ""


def _losses(side: str, got: dict[str, float], args: argparse.Namespace) -> str:
    """How many sessions one side did not get RUNNING, and to what."""
    if "failed" in got:  # ours: sessions failed, or not RUNNING within the bound
        late = got["lost"] - got["failed"]
        why = f"({got['failed']:.0f} failed, {late:.0f} not RUNNING within {args.timeout:g} s)"
        return lost_note(side, int(got["lost"]), args.sessions, "sessions", why)
    why = f"({got['timeouts']:.0f} to the {args.call_timeout:g} s call timeout, "
    why += f"{got['other']:.0f} to other errors)"
    return lost_note(side, int(got["lost"]), args.sessions, "create calls", why)
