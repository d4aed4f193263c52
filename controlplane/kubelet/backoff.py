"""CrashLoopBackOff timing, as upstream's flowcontrol.Backoff keyed by container: the first restart is immediate,
then each restart waits 10 s, 20 s, 40 s ... up to 5 min after the container last finished; a container that stayed
up for twice the maximum starts over from the initial delay."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Entry:
    backoff: float
    last_update: float


class Backoff:
    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self._entries: dict[str, _Entry] = {}

    def _expired(self, entry: _Entry, event_time: float) -> bool:
        return event_time - entry.last_update > self.maximum * 2

    def remaining(self, key: str, event_time: float, now: float) -> float:
        """Seconds left before a container that finished at ``event_time`` may restart (0 when it may now)."""
        entry = self._entries.get(key)
        if entry is None or self._expired(entry, event_time):
            return 0.0
        return max(0.0, event_time + entry.backoff - now)

    def current(self, key: str) -> float:
        entry = self._entries.get(key)
        return entry.backoff if entry is not None else self.initial

    def next(self, key: str, event_time: float, now: float) -> None:
        """Record a restart: the following one waits twice as long (capped)."""
        entry = self._entries.get(key)
        if entry is None or self._expired(entry, event_time):
            self._entries[key] = _Entry(self.initial, now)
        else:
            entry.backoff = min(entry.backoff * 2, self.maximum)
            entry.last_update = now

    def forget(self, prefix: str) -> None:
        for key in [k for k in self._entries if k.startswith(prefix)]:
            del self._entries[key]


def go_duration(seconds: float) -> str:
    """A duration as Go's time.Duration prints it ("10s", "2m40s", "500ms"), as upstream's messages show it."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    total = round(seconds, 3)
    minutes, secs = divmod(total, 60)
    hours, minutes = divmod(int(minutes), 60)
    sec_text = f"{secs:g}s"
    if hours:
        return f"{hours}h{minutes}m{sec_text}"
    if minutes:
        return f"{minutes}m{sec_text}"
    return sec_text
