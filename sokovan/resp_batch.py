"""Many small Redis commands in one write, their replies parsed by hiredis in C.

A sweep reads a presence hash per kernel: a million HMGETs. In a Lua script each costs the
server a `redis.call` (about 4-6 µs a kernel, and the server does nothing else meanwhile);
through redis-py's pipeline each costs the client a Python call to pack and another to parse.
Here the commands of a page are one bytes object made with a join, sent on a connection the
client's own pool opened (so authentication, database, TLS and Sentinel are the client's), and
the replies are read in large chunks and split by one `hiredis.Reader`: about 1 µs a command
on each side, and the server answers commands natively.

It reaches into the pool connection's stream pair, which redis-py keeps private; when a
connection has none (another transport, or a redis-py that changed), `BatchUnavailable` says
so and the caller takes its scripted path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.exceptions import ResponseError

# One read's bound: replies of a 10,000-kernel page come in a few reads.
_READ_CHUNK = 1 << 20
# Bound of one batch's exchange when the client has no socket timeout of its own.
DEFAULT_TIMEOUT_SEC = 30.0


class BatchUnavailable(Exception):
    """The client's connections offer no stream pair to write a batch on."""


def command(*args: bytes) -> bytes:
    """One command in the Redis protocol."""
    parts = [b"*%d\r\n" % len(args)]
    parts += [b"$%d\r\n%b\r\n" % (len(a), a) for a in args]
    return b"".join(parts)


def same_command(head: Sequence[bytes], keys: Sequence[bytes], tail: Sequence[bytes]) -> bytes:
    """`head key tail` once per key, as one bytes object.

    Keys of one length (kernel ids) are joined in one call at C speed; others are framed one
    by one.
    """
    if not keys:
        return b""
    before = b"*%d\r\n" % (len(head) + 1 + len(tail))
    before += b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in head)
    after = b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in tail)
    lengths = set(map(len, keys))
    if len(lengths) == 1:
        opening = before + b"$%d\r\n" % lengths.pop()
        return opening + (b"\r\n" + after + opening).join(keys) + b"\r\n" + after
    return b"".join(before + b"$%d\r\n%b\r\n" % (len(k), k) + after for k in keys)


async def exchange(redis: Redis, payload: bytes, replies: int) -> list[Any]:
    """Sends `payload` (commands) on one pooled connection; returns its `replies` replies.

    An error reply comes back as a `ResponseError` in its place. Raises `BatchUnavailable`
    when the connection has no streams, ConnectionError/OSError/TimeoutError when the
    exchange fails; a failed connection is closed, not given back in an unknown state.
    """
    pool = redis.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        reader = getattr(conn, "_reader", None)
        writer = getattr(conn, "_writer", None)
        if not isinstance(reader, asyncio.StreamReader) or writer is None:
            raise BatchUnavailable(f"{type(conn).__name__} has no stream pair")
        timeout = getattr(conn, "socket_timeout", None) or DEFAULT_TIMEOUT_SEC
        async with asyncio.timeout(timeout):
            writer.write(payload)
            await writer.drain()
            out = await _read(reader, replies)
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)
    return out


async def _read(reader: asyncio.StreamReader, replies: int) -> list[Any]:
    parser = hiredis.Reader(replyError=ResponseError)
    out: list[Any] = []
    while len(out) < replies:
        data = await reader.read(_READ_CHUNK)
        if not data:
            raise ConnectionError(f"connection closed after {len(out)} of {replies} replies")
        parser.feed(data)
        while (reply := parser.gets()) is not False:
            out.append(reply)
    return out
