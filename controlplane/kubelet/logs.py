"""Serving container logs: read a CRI log file and answer as ``kubectl logs`` expects (tail, since, timestamps,
limitBytes, follow).

Every runtime writes the CRI log format to a file on this host (crilog.py), so ``kubectl logs`` is the kubelet
reading that file; follow mode polls the file for growth and ends once the container has exited and everything it
wrote has been sent, as the kubelet's own log reader does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from .cri import crilog

FOLLOW_POLL = 0.1  # seconds between looks at a followed file: a log tail, not a synchronisation


@dataclass(slots=True)
class LogOptions:
    follow: bool = False
    tail_lines: int | None = None
    since: datetime | None = None
    timestamps: bool = False
    limit_bytes: int | None = None


def _render(entry: crilog.LogEntry, raw_ts: bytes, timestamps: bool) -> bytes:
    body = entry.content if entry.partial else entry.content + b"\n"
    return raw_ts + b" " + body if timestamps else body


def _parse(lines: list[bytes]) -> list[tuple[crilog.LogEntry, bytes]]:
    out = []
    for line in lines:
        try:
            out.append((crilog.parse_line(line), line.split(b" ", 1)[0]))
        except ValueError:
            continue  # a torn or foreign line: upstream skips what it cannot parse too
    return out


def _read_from(path: str, offset: int) -> tuple[bytes, int]:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return b"", offset
    return data, offset + len(data)


async def read_logs(path: str, options: LogOptions,
                    running: Callable[[], Awaitable[bool]] | None = None) -> AsyncIterator[bytes]:
    """Yield the log as ``kubectl logs`` shows it. ``running()`` says whether the container may still write."""
    data, offset = await asyncio.to_thread(_read_from, path, 0)
    complete, _, rest = data.rpartition(b"\n")
    entries = _parse(complete.split(b"\n")) if complete else []
    if options.since is not None:
        entries = [(e, ts) for e, ts in entries if e.timestamp >= options.since]
    if options.tail_lines is not None:
        # Count whole lines: a run of partial entries and the full one that ends it are one line.
        keep, lines = 0, 0
        for i in range(len(entries) - 1, -1, -1):
            if not entries[i][0].partial:
                if lines == options.tail_lines:
                    break
                lines += 1
            keep = len(entries) - i
        entries = entries[len(entries) - keep:] if options.tail_lines > 0 else []
    budget = options.limit_bytes
    for entry, ts in entries:
        chunk = _render(entry, ts, options.timestamps)
        if budget is not None:
            if budget <= 0:
                return
            chunk, budget = chunk[:budget], budget - len(chunk)
        yield chunk
    if not options.follow:
        return
    pending = rest
    while True:
        alive = running is None or await running()
        data, offset = await asyncio.to_thread(_read_from, path, offset)
        if data:
            pending += data
            complete, _, pending = pending.rpartition(b"\n")
            for entry, ts in _parse(complete.split(b"\n")) if complete else []:
                chunk = _render(entry, ts, options.timestamps)
                if budget is not None:
                    if budget <= 0:
                        return
                    chunk, budget = chunk[:budget], budget - len(chunk)
                yield chunk
            continue
        if not alive:
            return
        await asyncio.sleep(FOLLOW_POLL)
