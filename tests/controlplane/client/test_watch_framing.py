"""Watch stream framing: newline-delimited JSON events split at arbitrary chunk boundaries, and ERROR frames.

These tests feed bytes through httpx.MockTransport. That is acceptable here (the project prefers a real API server)
because what is under test is only how the client cuts a byte stream into events and what it sends to resume —
nothing a server decides. Watch behaviour against a real server is in test_against_apiserver.py.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable

import httpx
import orjson
import pytest

from controlplane.client import (
    CONFIGMAPS,
    ApiClient,
    Expired,
    Gone,
    ResumableWatcher,
    ServerError,
    WatchDecoder,
    WatchEvent,
    WatchProtocolError,
    watch,
)


def cm(name: str, rv: str, **data: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": rv},
        "data": data,
    }


EVENTS = [
    WatchEvent("ADDED", cm("a", "10", greeting="héllo wörld ✓")),  # multi-byte UTF-8 to split mid-character
    WatchEvent("MODIFIED", cm("a", "11", greeting="x" * 5000)),  # a line longer than most chunks
    WatchEvent("BOOKMARK", {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"resourceVersion": "12"}}),
    WatchEvent("DELETED", cm("a", "13")),
]


def frame(event: WatchEvent) -> bytes:
    return orjson.dumps({"type": event.type, "object": event.object}) + b"\n"


STREAM = b"".join(frame(e) for e in EVENTS)
LINES = STREAM.split(b"\n")[:-1]


def chunkings() -> list[tuple[str, list[bytes]]]:
    rng = random.Random(1)
    out = [
        ("whole", [STREAM]),
        ("bytewise", [STREAM[i : i + 1] for i in range(len(STREAM))]),
        ("at-newlines", [line + b"\n" for line in STREAM.split(b"\n")[:-1]]),
        ("newline-first", [LINES[0]] + [b"\n" + line for line in LINES[1:]] + [b"\n"]),
    ]
    for n in range(5):
        cuts = sorted(rng.sample(range(1, len(STREAM)), 40))
        out.append((f"random-{n}", [STREAM[i:j] for i, j in zip([0, *cuts], [*cuts, len(STREAM)])]))
    return out


@pytest.mark.parametrize("chunks", [c for _, c in chunkings()], ids=[n for n, _ in chunkings()])
def test_decoder_reassembles_lines_across_chunks(chunks: list[bytes]) -> None:
    assert b"".join(chunks) == STREAM
    decoder = WatchDecoder()
    events = [e for chunk in chunks for e in decoder.feed(chunk)] + decoder.close()
    assert events == EVENTS


def test_decoder_tolerates_blank_lines_and_a_missing_final_newline() -> None:
    decoder = WatchDecoder()
    events = decoder.feed(b"\n" + frame(EVENTS[0]) + b"\r\n" + frame(EVENTS[3]).rstrip())
    assert events == [EVENTS[0]]
    assert decoder.close() == [EVENTS[3]]


def test_decoder_rejects_garbage() -> None:
    with pytest.raises(WatchProtocolError):
        WatchDecoder().feed(b"<html>502</html>\n")
    with pytest.raises(WatchProtocolError):
        WatchDecoder().feed(b'{"object": {}}\n')


def streaming_client(handler: Callable[[httpx.Request], httpx.Response]) -> ApiClient:
    return ApiClient("http://apiserver.test", transport=httpx.MockTransport(handler))


def chunked(chunks: list[bytes]) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for c in chunks:
            yield c

    return gen()


@pytest.mark.parametrize("chunks", [c for _, c in chunkings()], ids=[n for n, _ in chunkings()])
async def test_watch_streams_events_across_chunk_boundaries(chunks: list[bytes]) -> None:
    seen_requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen_requests.append(request)
        return httpx.Response(200, headers={"Content-Type": "application/json"}, content=chunked(chunks))

    async with streaming_client(handler) as client:
        async with watch(client, CONFIGMAPS, "default", resource_version="9", timeout_seconds=30) as stream:
            events = [e async for e in stream]
    assert events == EVENTS
    params = seen_requests[0].url.params
    assert seen_requests[0].url.path == "/api/v1/namespaces/default/configmaps"
    assert params["watch"] == "true"
    assert params["resourceVersion"] == "9"
    assert params["allowWatchBookmarks"] == "true"
    assert params["timeoutSeconds"] == "30"


def status(code: int, reason: str, message: str = "boom") -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


@pytest.mark.parametrize(
    ("reason", "exc"), [("Expired", Expired), ("Gone", Gone)]
)
async def test_410_error_event_raises_gone(reason: str, exc: type[Exception]) -> None:
    body = frame(EVENTS[0]) + frame(WatchEvent("ERROR", status(410, reason, "too old resource version: 1 (9)")))

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=chunked([body[:7], body[7:]]))

    async with streaming_client(handler) as client:
        stream = watch(client, CONFIGMAPS, resource_version="1")
        assert (await stream.__anext__()) == EVENTS[0]
        with pytest.raises(exc) as info:
            await stream.__anext__()
    assert isinstance(info.value, Gone)
    assert info.value.code == 410
    assert "too old" in info.value.message


async def test_other_error_events_raise_their_api_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=frame(WatchEvent("ERROR", status(500, "InternalError"))))

    async with streaming_client(handler) as client:
        with pytest.raises(ServerError):
            async for _ in watch(client, CONFIGMAPS):
                pass


async def test_watch_refused_with_http_410_raises_gone() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(410, content=orjson.dumps(status(410, "Expired")))

    async with streaming_client(handler) as client:
        with pytest.raises(Expired):
            async for _ in watch(client, CONFIGMAPS, resource_version="1"):
                pass


async def test_resumable_watcher_reopens_from_the_last_event_or_bookmark() -> None:
    # What is under test is the resourceVersion sent on each re-open after the server ends a stream.
    streams = [
        [frame(EVENTS[0]), frame(EVENTS[1])[:100], frame(EVENTS[1])[100:]],
        [frame(EVENTS[2])],  # only a bookmark: the next watch resumes from its resourceVersion
        [frame(EVENTS[3])],
        [frame(WatchEvent("ERROR", status(410, "Expired")))],
    ]
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, content=chunked(streams[len(requests) - 1]))

    async with streaming_client(handler) as client:
        watcher = ResumableWatcher(client, CONFIGMAPS, resource_version="9", timeout_seconds=1)
        seen = []
        with pytest.raises(Gone):
            async for event in watcher:
                seen.append(event)
        await watcher.aclose()
    assert seen == [EVENTS[0], EVENTS[1], EVENTS[3]], "bookmarks are consumed, not yielded"
    assert [r.url.params["resourceVersion"] for r in requests] == ["9", "11", "12", "13"]
    assert all(r.url.params["timeoutSeconds"] == "1" for r in requests)
    assert watcher.resource_version == "13"
