"""The CRI container log format, written by the process runtime and read back by whoever serves logs.

Every runtime the kubelet knows writes ``<RFC3339Nano timestamp> <stdout|stderr> <F|P> <content>`` lines to the
container's log_path (``P`` marks a partial line split at a size limit, ``F`` a full one); ``kubectl logs`` is
the kubelet reading that file. Keeping both directions here means the writer and the reader cannot drift.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Literal

Stream = Literal["stdout", "stderr"]

# containerd's default max_container_log_line_size: longer lines are split into partial entries.
MAX_LINE_SIZE = 16 * 1024


def format_timestamp(ns: int) -> str:
    """RFC3339 with nanoseconds in UTC, as containerd writes it (9 fraction digits always; Go parses both)."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


def format_line(stream: Stream, content: bytes, *, partial: bool = False, timestamp_ns: int | None = None) -> bytes:
    ts = format_timestamp(time.time_ns() if timestamp_ns is None else timestamp_ns)
    return f"{ts} {stream} {'P' if partial else 'F'} ".encode() + content + b"\n"


@dataclass(frozen=True, slots=True)
class LogEntry:
    timestamp: datetime
    stream: Stream
    partial: bool
    content: bytes


def parse_line(line: bytes) -> LogEntry:
    """Parse one log line (with or without its trailing newline). Raises ValueError on a malformed line."""
    line = line.rstrip(b"\n")
    ts, stream, tag, content = [*line.split(b" ", 3), b""][:4]
    if stream not in (b"stdout", b"stderr") or tag not in (b"F", b"P"):
        raise ValueError(f"not a CRI log line: {line[:80]!r}")
    text = ts.decode()
    # Python's fromisoformat keeps microseconds only; the nanoseconds beyond them are dropped.
    main, _, frac = text.rstrip("Z").partition(".")
    parsed = datetime.fromisoformat(main).replace(tzinfo=UTC)
    if frac:
        parsed = parsed.replace(microsecond=int(frac[:6].ljust(6, "0")))
    return LogEntry(parsed, stream.decode(), tag == b"P", content)  # type: ignore[arg-type]


class LogLineWriter:
    """Turns a byte stream of one container stream into CRI log lines in an open (shared) log file.

    Both streams of a container write to one file; lines from either are whole because the file is only written
    from the event loop's thread, one complete entry per write.
    """

    def __init__(self, file: IO[bytes], stream: Stream) -> None:
        self._file = file
        self._stream: Stream = stream
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while True:
            newline = self._buffer.find(b"\n", 0, MAX_LINE_SIZE + 1)
            if newline >= 0:
                self._emit(self._buffer[:newline], partial=False)
                self._buffer = self._buffer[newline + 1 :]
            elif len(self._buffer) > MAX_LINE_SIZE:
                self._emit(self._buffer[:MAX_LINE_SIZE], partial=True)
                self._buffer = self._buffer[MAX_LINE_SIZE:]
            else:
                break

    def close(self) -> None:
        """End of stream: a last line without a newline is still a full line."""
        if self._buffer:
            self._emit(self._buffer, partial=False)
            self._buffer = b""

    def _emit(self, content: bytes, *, partial: bool) -> None:
        self._file.write(format_line(self._stream, content, partial=partial))
        self._file.flush()
