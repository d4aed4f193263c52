"""Watches: a long-lived chunked response of newline-delimited JSON events, decoded as the bytes arrive.

``WatchDecoder`` is the pure framing (bytes in, events out, lines split anywhere across chunks). ``watch()`` runs one
watch request; ``ResumableWatcher`` is what informers build on: it remembers the last resourceVersion seen (from
events and bookmarks), re-opens the watch from there whenever the server ends it (timeoutSeconds expiry is routine),
and raises ``Gone`` when that resourceVersion is too old and only a relist can recover.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from . import protocol
from .errors import error_from_status
from .protocol import Selector
from .resources import Resource
from .rest import ApiClient
from .transport import StreamResponse

log = logging.getLogger(__name__)

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"
BOOKMARK = "BOOKMARK"
ERROR = "ERROR"

# Past the server-side timeoutSeconds, how long a silent connection is still given before it is presumed dead.
READ_TIMEOUT_MARGIN = 30.0


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK or ERROR
    object: dict[str, Any]


class WatchProtocolError(ValueError):
    """A watch frame that is not a JSON event."""


class WatchDecoder:
    """Splits a watch stream into events. Feed it chunks as they arrive; a line may span any number of chunks."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf already known to hold no newline, so long lines are not rescanned

    def feed(self, chunk: bytes) -> list[WatchEvent]:
        buf = self._buf
        buf += chunk
        if buf.find(b"\n", self._scanned) == -1:
            self._scanned = len(buf)
            return []
        events: list[WatchEvent] = []
        start = 0
        while (end := buf.find(b"\n", start)) != -1:
            line = buf[start:end]
            if line and not line.isspace():  # tolerate blank keep-alive lines and CRLF endings
                events.append(_decode_line(line))
            start = end + 1
        del buf[:start]
        self._scanned = len(buf)
        return events

    def close(self) -> list[WatchEvent]:
        """Events left in a final line without a newline (tolerated; the API server always ends lines)."""
        rest, self._buf = bytes(self._buf), bytearray()
        self._scanned = 0
        return [_decode_line(rest)] if rest.strip() else []


def _decode_line(line: bytes | bytearray) -> WatchEvent:
    try:
        frame = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise WatchProtocolError(f"undecodable watch frame: {bytes(line[:200])!r}") from e
    if not isinstance(frame, dict) or "type" not in frame:
        raise WatchProtocolError(f"not a watch event: {bytes(line[:200])!r}")
    return WatchEvent(frame["type"], frame.get("object") or {})


class Watch:
    """One watch request as an async iterator of events (bookmarks included); ends when the server ends the stream.

    An ERROR event raises the matching ApiError (410 → ``Gone``). Use ``async with`` (or ``aclose()``) to release
    the connection when stopping early.
    """

    def __init__(self, client: ApiClient, request: protocol.ApiRequest, *, read_timeout: float | None) -> None:
        self._client = client
        self._request = request
        self._read_timeout = read_timeout
        self._response: StreamResponse | httpx.Response | None = None
        self._chunks: AsyncIterator[bytes] | None = None
        self._decoder = WatchDecoder()
        self._pending: deque[WatchEvent] = deque()
        self._finished = False

    async def __aenter__(self) -> Watch:
        await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> Watch:
        return self

    async def _open(self) -> None:
        if self._response is None and not self._finished:
            self._response = await self._client.open_stream(self._request, read_timeout=self._read_timeout)
            self._chunks = self._response.aiter_bytes()

    async def __anext__(self) -> WatchEvent:
        while not self._pending:
            if self._finished:
                raise StopAsyncIteration
            await self._open()
            assert self._chunks is not None
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._pending.extend(self._decoder.close())
                await self.aclose()
                continue
            except BaseException:
                await self.aclose()
                raise
            self._pending.extend(self._decoder.feed(chunk))
        event = self._pending.popleft()
        if event.type == ERROR:
            await self.aclose()
            raise error_from_status(event.object)
        return event

    async def aclose(self) -> None:
        self._finished = True
        response, self._response = self._response, None
        if response is not None:
            await response.aclose()


def watch(
    client: ApiClient,
    resource: Resource,
    namespace: str | None = None,
    *,
    resource_version: str | None = None,
    label_selector: Selector | None = None,
    field_selector: Selector | None = None,
    timeout_seconds: int | None = None,
    allow_bookmarks: bool = True,
) -> Watch:
    """Watch a collection (all namespaces when ``namespace`` is None) from ``resource_version``.

    Without a resource_version the server starts with synthetic ADDED events for every existing object.
    ``timeout_seconds`` asks the server to end the stream after that long.
    """
    request = protocol.watch_request(
        resource,
        namespace,
        resource_version=resource_version,
        label_selector=label_selector,
        field_selector=field_selector,
        timeout_seconds=timeout_seconds,
        allow_bookmarks=allow_bookmarks,
    )
    read_timeout = timeout_seconds + READ_TIMEOUT_MARGIN if timeout_seconds else None
    return Watch(client, request, read_timeout=read_timeout)


def resource_version_of(obj: dict[str, Any]) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion") or None


class ResumableWatcher:
    """Watch that outlives individual watch requests, yielding ADDED/MODIFIED/DELETED events.

    It starts from ``resource_version`` (normally a list's), tracks the newest resourceVersion of every event and
    bookmark (``resource_version``), and when the server ends a stream re-opens from there, so nothing is missed
    or repeated. Raises ``Gone`` when the server says that resourceVersion is compacted (relist, then start a new
    watcher); any other failure (ApiError, httpx.TransportError) propagates too — the caller owns the retry policy.

    ``timeout_seconds`` per request defaults, as in client-go's reflector, to a random 5–10 minutes so that many
    watchers do not all reconnect at once.
    """

    def __init__(
        self,
        client: ApiClient,
        resource: Resource,
        namespace: str | None = None,
        *,
        resource_version: str | None,
        label_selector: Selector | None = None,
        field_selector: Selector | None = None,
        timeout_seconds: int | None = None,
    ) -> None:
        self._client = client
        self._resource = resource
        self._namespace = namespace
        self.resource_version = resource_version
        self._label_selector = label_selector
        self._field_selector = field_selector
        self._timeout_seconds = timeout_seconds
        self.streams_opened = 0
        self._current: Watch | None = None
        self._closed = False
        self._gen: AsyncGenerator[WatchEvent, None] | None = None

    def __aiter__(self) -> ResumableWatcher:
        return self

    async def __anext__(self) -> WatchEvent:
        if self._gen is None:
            self._gen = self._events()
        return await self._gen.__anext__()

    async def _events(self) -> AsyncGenerator[WatchEvent, None]:
        while not self._closed:
            timeout = self._timeout_seconds or random.randint(300, 600)
            self._current = watch(
                self._client,
                self._resource,
                self._namespace,
                resource_version=self.resource_version,
                label_selector=self._label_selector,
                field_selector=self._field_selector,
                timeout_seconds=timeout,
                allow_bookmarks=True,
            )
            self.streams_opened += 1
            try:
                async with self._current as stream:
                    async for event in stream:
                        rv = resource_version_of(event.object)
                        if rv:
                            self.resource_version = rv
                        if event.type == BOOKMARK:
                            continue
                        yield event
            finally:
                self._current = None
            log.debug("watch of %s ended at resourceVersion %s; re-opening", self._resource, self.resource_version)

    async def aclose(self) -> None:
        self._closed = True
        if self._gen is not None:
            await self._gen.aclose()
        if self._current is not None:
            await self._current.aclose()
