"""The CRI log format: what the process runtime writes is what containerd writes and what a reader parses."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest

from controlplane.kubelet.cri import crilog


def test_line_format_and_parse() -> None:
    line = crilog.format_line("stderr", b"boom", timestamp_ns=1_700_000_000_123_456_789)
    assert line == b"2023-11-14T22:13:20.123456789Z stderr F boom\n"
    entry = crilog.parse_line(line)
    assert entry.stream == "stderr" and not entry.partial and entry.content == b"boom"
    assert entry.timestamp == datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)


def test_parses_containerd_lines() -> None:
    entry = crilog.parse_line(b"2026-11-25T16:57:56.609792344Z stdout F hello world")
    assert (entry.stream, entry.content) == ("stdout", b"hello world")
    assert crilog.parse_line(b"2026-11-25T16:57:56Z stdout P ").content == b""
    with pytest.raises(ValueError):
        crilog.parse_line(b"not a log line")


def test_writer_splits_lines_and_marks_partials() -> None:
    out = io.BytesIO()
    writer = crilog.LogLineWriter(out, "stdout")
    writer.feed(b"one\ntw")
    writer.feed(b"o\n" + b"x" * (crilog.MAX_LINE_SIZE + 10) + b"\nlast")
    writer.close()
    entries = [crilog.parse_line(line) for line in out.getvalue().splitlines()]
    assert [(e.partial, e.content[:5], len(e.content)) for e in entries] == [
        (False, b"one", 3),
        (False, b"two", 3),
        (True, b"xxxxx", crilog.MAX_LINE_SIZE),
        (False, b"xxxxx", 10),
        (False, b"last", 4),
    ]
