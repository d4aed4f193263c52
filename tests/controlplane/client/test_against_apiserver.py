"""The client against a real API server: REST verbs, errors, pagination, watches, informers and the shared factory.

``apiserver`` (tests/conftest.py) is ccmkit's API server running under uvicorn with a memory store. Where a test
needs the server to misbehave (a 410 at a chosen moment, a dropped stream) a transport wraps the real connection and
injects only that one fault; everything else is real traffic.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from controlplane.client import (
    CONFIGMAPS,
    DEPLOYMENTS,
    NAMESPACES,
    PODS,
    SECRETS,
    AlreadyExists,
    ApiClient,
    Backoff,
    Conflict,
    Informer,
    NotFound,
    SharedInformerFactory,
    from_url,
    meta_namespace_key,
    namespace_index,
    watch,
)


class FaultInjectingTransport(httpx.AsyncBaseTransport):
    """Forwards every request to the real server, except the watch request a test has armed a fault for."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.watch_requests: list[httpx.Request] = []
        self.list_requests: list[httpx.Request] = []
        self.fault: str | None = None  # "gone": hold the next watch, then answer 410; "break": drop its stream
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.params.get("watch") == "true":
            self.watch_requests.append(request)
            fault, self.fault = self.fault, None
            if fault == "gone":
                self.held.set()
                await self.release.wait()
                status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": "too old resource version", "reason": "Expired", "code": 410}
                # As kube-apiserver does it: a 200 whose stream carries one ERROR event.
                return httpx.Response(200, content=orjson.dumps({"type": "ERROR", "object": status}) + b"\n")
            if fault == "break":
                return httpx.Response(200, stream=_BrokenStream())
        elif request.method == "GET":
            self.list_requests.append(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def watches_of(self, plural: str) -> list[httpx.Request]:
        return [r for r in self.watch_requests if r.url.path.endswith("/" + plural)]


class _BrokenStream(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        raise httpx.ReadError("connection reset by peer")
        yield b""  # pragma: no cover - makes this an async generator


@pytest.fixture
def transport() -> FaultInjectingTransport:
    return FaultInjectingTransport()


@pytest.fixture
async def client(apiserver: Any, transport: FaultInjectingTransport) -> AsyncIterator[ApiClient]:
    async with ApiClient(apiserver.url, transport=transport) as c:
        yield c


@pytest.fixture
async def ns(client: ApiClient) -> AsyncIterator[str]:
    """A fresh namespace per test, so tests sharing one server never see each other's objects."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    await client.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    try:
        await client.delete(NAMESPACES, name)
    except NotFound:
        pass


def configmap(name: str, labels: dict[str, str] | None = None, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels or {}}, "data": data}


# -- REST -----------------------------------------------------------------------------------------------------


async def test_version(client: ApiClient) -> None:
    version = await client.version()
    assert version["major"] and version["minor"] and version["gitVersion"].startswith("v")


async def test_raw_escape_hatch(client: ApiClient) -> None:
    discovery = (await client.raw("GET", "/api")).json()
    assert discovery["kind"] == "APIVersions" and "v1" in discovery["versions"]
    with pytest.raises(NotFound):
        await client.raw("GET", "/api/v1/namespaces/default/configmaps/absent")


async def test_configmap_crud_round_trip(client: ApiClient, ns: str) -> None:
    created = await client.create(CONFIGMAPS, configmap("settings", {"app": "web"}, color="blue"), ns)
    meta = created["metadata"]
    assert (meta["name"], meta["namespace"]) == ("settings", ns)
    assert meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"]
    assert created["data"] == {"color": "blue"}

    fetched = await client.get(CONFIGMAPS, "settings", ns)
    assert fetched["metadata"]["uid"] == meta["uid"]
    assert fetched["data"] == {"color": "blue"}

    fetched["data"]["size"] = "L"
    updated = await client.update(CONFIGMAPS, fetched)
    assert updated["data"] == {"color": "blue", "size": "L"}
    assert int(updated["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])

    with pytest.raises(Conflict) as stale:
        await client.update(CONFIGMAPS, fetched)  # still carries the old resourceVersion
    assert stale.value.code == 409

    merged = await client.patch(CONFIGMAPS, "settings", {"data": {"color": "red", "size": None}}, ns)
    assert merged["data"] == {"color": "red"}
    patched = await client.patch(
        CONFIGMAPS, "settings", [{"op": "add", "path": "/data/shape", "value": "round"}], ns, patch_type="json"
    )
    assert patched["data"] == {"color": "red", "shape": "round"}
    strategic = await client.patch(CONFIGMAPS, "settings", {"data": {"shape": "square"}}, ns, patch_type="strategic")
    assert strategic["data"] == {"color": "red", "shape": "square"}

    await client.delete(CONFIGMAPS, "settings", ns)
    with pytest.raises(NotFound) as missing:
        await client.get(CONFIGMAPS, "settings", ns)
    assert missing.value.code == 404 and missing.value.reason == "NotFound"
    with pytest.raises(NotFound):
        await client.delete(CONFIGMAPS, "settings", ns)


async def test_create_twice_is_already_exists(client: ApiClient, ns: str) -> None:
    await client.create(CONFIGMAPS, configmap("dup"), ns)
    with pytest.raises(AlreadyExists) as info:
        await client.create(CONFIGMAPS, configmap("dup"), ns)
    assert info.value.code == 409 and info.value.reason == "AlreadyExists"


async def test_namespace_and_type_defaults(client: ApiClient, ns: str, apiserver: Any) -> None:
    # No apiVersion/kind: the client fills them in from the resource. No namespace argument: the object's own.
    untyped = {"metadata": {"name": "own-ns", "namespace": ns}, "data": {"k": "v"}}
    created = await client.create(CONFIGMAPS, untyped)
    assert (created["kind"], created["metadata"]["namespace"]) == ("ConfigMap", ns)
    assert "kind" not in untyped, "the caller's dict is left alone"
    # Neither: the config's default namespace.
    async with ApiClient(from_url(apiserver.url, namespace=ns)) as scoped:
        await scoped.create(CONFIGMAPS, {"metadata": {"name": "config-ns"}})
        assert (await scoped.get(CONFIGMAPS, "config-ns"))["metadata"]["namespace"] == ns


async def test_subresources_binding_status_and_scale(client: ApiClient, ns: str) -> None:
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    await client.create(PODS, pod, ns)
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"},
               "target": {"apiVersion": "v1", "kind": "Node", "name": "node-1"}}
    await client.create_subresource(PODS, "p", "binding", binding, ns)
    bound = await client.get(PODS, "p", ns)
    assert bound["spec"]["nodeName"] == "node-1"

    bound["status"] = {**bound.get("status", {}), "phase": "Running"}
    after = await client.update_status(PODS, bound)
    assert after["status"]["phase"] == "Running"
    status = await client.get_subresource(PODS, "p", "status", ns)
    assert status["status"]["phase"] == "Running"

    labels = {"app": "web"}
    deployment = {"metadata": {"name": "web"}, "spec": {
        "replicas": 1, "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}},
    }}
    await client.create(DEPLOYMENTS, deployment, ns)
    scale = await client.get_subresource(DEPLOYMENTS, "web", "scale", ns)
    assert (scale["kind"], scale["spec"]["replicas"]) == ("Scale", 1)
    scale["spec"]["replicas"] = 3
    await client.update_subresource(DEPLOYMENTS, scale, "scale")
    assert (await client.get(DEPLOYMENTS, "web", ns))["spec"]["replicas"] == 3


async def test_list_with_label_selector_and_pagination(
    client: ApiClient, ns: str, transport: FaultInjectingTransport
) -> None:
    for i in range(7):
        await client.create(CONFIGMAPS, configmap(f"cm-{i}", {"app": "a" if i % 2 == 0 else "b"}), ns)

    selected = await client.list(CONFIGMAPS, ns, label_selector={"app": "a"})
    assert sorted(i["metadata"]["name"] for i in selected["items"]) == ["cm-0", "cm-2", "cm-4", "cm-6"]
    assert selected["metadata"]["resourceVersion"]

    page = await client.list(CONFIGMAPS, ns, limit=3)
    assert len(page["items"]) == 3 and page["metadata"]["continue"]

    before = len(transport.list_requests)
    everything = await client.list_all(CONFIGMAPS, ns, page_size=3)
    assert len(transport.list_requests) - before == 3, "7 items in pages of 3"
    assert sorted(i["metadata"]["name"] for i in everything["items"]) == [f"cm-{i}" for i in range(7)]
    assert everything["metadata"]["resourceVersion"] and "continue" not in everything["metadata"]

    b_only = await client.list_all(CONFIGMAPS, ns, label_selector="app=b", page_size=2)
    assert sorted(i["metadata"]["name"] for i in b_only["items"]) == ["cm-1", "cm-3", "cm-5"]


async def test_delete_collection_by_label(client: ApiClient, ns: str) -> None:
    for name, app in [("x1", "x"), ("x2", "x"), ("y1", "y")]:
        await client.create(CONFIGMAPS, configmap(name, {"app": app}), ns)
    await client.delete_collection(CONFIGMAPS, ns, label_selector="app=x")
    remaining = await client.list(CONFIGMAPS, ns)
    assert [i["metadata"]["name"] for i in remaining["items"]] == ["y1"]


# -- watch ----------------------------------------------------------------------------------------------------


async def collect(stream: Any, n: int, timeout: float = 10.0) -> list[Any]:
    async def take() -> list[Any]:
        out = []
        async for event in stream:
            if event.type != "BOOKMARK":
                out.append(event)
                if len(out) == n:
                    break
        return out

    return await asyncio.wait_for(take(), timeout)


async def test_watch_sees_changes_in_order_and_resumes_from_a_resource_version(client: ApiClient, ns: str) -> None:
    start_rv = (await client.list(CONFIGMAPS, ns))["metadata"]["resourceVersion"]
    await client.create(CONFIGMAPS, configmap("w", v="1"), ns)
    await client.patch(CONFIGMAPS, "w", {"data": {"v": "2"}}, ns)
    await client.delete(CONFIGMAPS, "w", ns)

    async with watch(client, CONFIGMAPS, ns, resource_version=start_rv, timeout_seconds=30) as stream:
        events = await collect(stream, 3)
    assert [e.type for e in events] == ["ADDED", "MODIFIED", "DELETED"]
    assert [e.object["data"].get("v") for e in events[:2]] == ["1", "2"]
    rvs = [int(e.object["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and len(set(rvs)) == 3

    # Resuming from the ADDED event's resourceVersion replays exactly what came after it.
    async with watch(client, CONFIGMAPS, ns, resource_version=events[0].object["metadata"]["resourceVersion"],
                     timeout_seconds=30) as stream:
        resumed = await collect(stream, 2)
    assert [(e.type, e.object["metadata"]["resourceVersion"]) for e in resumed] == [
        (e.type, e.object["metadata"]["resourceVersion"]) for e in events[1:]
    ]


async def test_watch_streams_live_changes(client: ApiClient, ns: str) -> None:
    start_rv = (await client.list(CONFIGMAPS, ns))["metadata"]["resourceVersion"]
    async with watch(client, CONFIGMAPS, ns, resource_version=start_rv, timeout_seconds=30) as stream:
        waiter = asyncio.create_task(collect(stream, 2))
        await client.create(CONFIGMAPS, configmap("live-1"), ns)
        await client.create(CONFIGMAPS, configmap("live-2"), ns)
        events = await waiter
    assert [(e.type, e.object["metadata"]["name"]) for e in events] == [("ADDED", "live-1"), ("ADDED", "live-2")]


async def test_watch_ends_when_the_server_timeout_expires(client: ApiClient, ns: str) -> None:
    async with watch(client, CONFIGMAPS, ns, timeout_seconds=1) as stream:
        events = await asyncio.wait_for(_drain(stream), 10)
    assert [e for e in events if e.type not in ("BOOKMARK",)] == []


async def _drain(stream: Any) -> list[Any]:
    return [e async for e in stream]


# -- informers ------------------------------------------------------------------------------------------------


class Recorder:
    """Handler set that records what an informer delivered, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any]] = []

    def on_add(self, obj: dict[str, Any]) -> None:
        self.events.append(("add", obj["metadata"]["name"], obj.get("data")))

    async def on_update(self, old: dict[str, Any], new: dict[str, Any]) -> None:  # async on purpose: both kinds work
        self.events.append(("update", new["metadata"]["name"], (old.get("data"), new.get("data"))))

    def on_delete(self, obj: dict[str, Any]) -> None:
        self.events.append(("delete", obj["metadata"]["name"], obj.get("data")))

    def attach(self, informer: Informer) -> Recorder:
        informer.add_handler(on_add=self.on_add, on_update=self.on_update, on_delete=self.on_delete)
        return self

    def has(self, kind: str, name: str) -> bool:
        return any(e[0] == kind and e[1] == name for e in self.events)


async def test_informer_syncs_and_delivers_add_update_delete(client: ApiClient, ns: str, eventually) -> None:
    await client.create(CONFIGMAPS, configmap("pre-1", {"tier": "fe"}, v="1"), ns)
    await client.create(CONFIGMAPS, configmap("pre-2", {"tier": "be"}, v="1"), ns)
    informer = Informer(client, CONFIGMAPS, ns)
    informer.add_index("tier", lambda o: (o["metadata"].get("labels") or {}).get("tier"))
    informer.add_index("namespace", namespace_index)
    rec = Recorder().attach(informer)
    informer.start()
    try:
        assert await informer.wait_for_sync(10)
        assert informer.has_synced
        assert sorted(informer.keys()) == [f"{ns}/pre-1", f"{ns}/pre-2"]
        assert informer.get(f"{ns}/pre-1")["kind"] == "ConfigMap"  # filled in even for list items
        assert [o["metadata"]["name"] for o in informer.by_index("tier", "fe")] == ["pre-1"]
        assert len(informer.by_index("namespace", ns)) == 2
        await eventually(lambda: rec.has("add", "pre-1") and rec.has("add", "pre-2"))

        await client.create(CONFIGMAPS, configmap("new", {"tier": "fe"}, v="1"), ns)
        await client.patch(CONFIGMAPS, "new", {"metadata": {"labels": {"tier": "be"}}, "data": {"v": "2"}}, ns)
        await client.delete(CONFIGMAPS, "pre-1", ns)
        await eventually(lambda: rec.has("delete", "pre-1"))
        assert rec.events[2:] == [
            ("add", "new", {"v": "1"}),
            ("update", "new", ({"v": "1"}, {"v": "2"})),
            ("delete", "pre-1", {"v": "1"}),
        ]
        assert sorted(informer.keys()) == [f"{ns}/new", f"{ns}/pre-2"]
        assert sorted(meta_namespace_key(o) for o in informer.by_index("tier", "be")) == [f"{ns}/new", f"{ns}/pre-2"]
        assert informer.by_index("tier", "fe") == []

        # A handler added late starts from the cache, like the others did.
        late = Recorder().attach(informer)
        await eventually(lambda: {e[1] for e in late.events} == {"new", "pre-2"})
    finally:
        await informer.stop()
    assert not informer.running


async def test_informer_resync_redelivers_the_cache(client: ApiClient, ns: str, eventually) -> None:
    await client.create(CONFIGMAPS, configmap("r", v="1"), ns)
    informer = Informer(client, CONFIGMAPS, ns, resync_period=0.05)
    rec = Recorder().attach(informer)
    informer.start()
    try:
        await eventually(lambda: sum(1 for e in rec.events if e == ("update", "r", ({"v": "1"}, {"v": "1"}))) >= 2)
    finally:
        await informer.stop()


async def test_informer_survives_the_server_closing_the_watch(
    client: ApiClient, ns: str, transport: FaultInjectingTransport, eventually
) -> None:
    informer = Informer(client, CONFIGMAPS, ns, watch_timeout_seconds=1)
    rec = Recorder().attach(informer)
    informer.start()
    try:
        assert await informer.wait_for_sync(10)
        await eventually(lambda: len(transport.watches_of("configmaps")) >= 3, 15, "two server-side watch expiries")
        await client.create(CONFIGMAPS, configmap("after-reconnect"), ns)
        await eventually(lambda: rec.has("add", "after-reconnect"))
        assert informer.relists == 0, "an expired watch resumes from its resourceVersion; it needs no relist"
        rvs = [r.url.params.get("resourceVersion") for r in transport.watches_of("configmaps")]
        assert all(rvs), "every re-opened watch names the resourceVersion to resume from"
    finally:
        await informer.stop()


async def test_informer_relists_after_410_and_synthesises_missed_changes(
    client: ApiClient, ns: str, transport: FaultInjectingTransport, eventually
) -> None:
    await client.create(CONFIGMAPS, configmap("keep", v="1"), ns)
    await client.create(CONFIGMAPS, configmap("doomed", v="1"), ns)
    await client.create(CONFIGMAPS, configmap("changing", v="1"), ns)
    informer = Informer(client, CONFIGMAPS, ns, watch_timeout_seconds=1, backoff=Backoff(initial=0.05, cap=0.2))
    rec = Recorder().attach(informer)
    informer.start()
    try:
        assert await informer.wait_for_sync(10)
        await eventually(lambda: len(rec.events) == 3)

        # The next watch request (after the current one expires) is held, then told 410: whatever changes meanwhile
        # the informer never sees as events, and must recover by relisting.
        transport.fault = "gone"
        await asyncio.wait_for(transport.held.wait(), 10)
        await client.create(CONFIGMAPS, configmap("born", v="1"), ns)
        await client.delete(CONFIGMAPS, "doomed", ns)
        await client.patch(CONFIGMAPS, "changing", {"data": {"v": "2"}}, ns)
        transport.release.set()

        await eventually(lambda: rec.has("add", "born") and rec.has("delete", "doomed") and rec.has("update", "changing"))
        assert informer.relists == 1
        missed = [e for e in rec.events[3:] if e[1] != "keep"]
        assert sorted(missed) == sorted([
            ("add", "born", {"v": "1"}),
            ("delete", "doomed", {"v": "1"}),  # the tombstone carries the last state the informer knew
            ("update", "changing", ({"v": "1"}, {"v": "2"})),
        ])
        assert not rec.has("update", "keep"), "unchanged objects are not re-delivered by a relist"
        assert sorted(informer.keys()) == sorted(f"{ns}/{n}" for n in ("keep", "born", "changing"))

        # And it keeps watching after the relist.
        await client.create(CONFIGMAPS, configmap("later"), ns)
        await eventually(lambda: rec.has("add", "later"))
    finally:
        transport.release.set()
        await informer.stop()


async def test_informer_relists_after_a_broken_connection(
    client: ApiClient, ns: str, transport: FaultInjectingTransport, eventually
) -> None:
    informer = Informer(client, CONFIGMAPS, ns, watch_timeout_seconds=1, backoff=Backoff(initial=0.05, cap=0.2))
    rec = Recorder().attach(informer)
    informer.start()
    try:
        assert await informer.wait_for_sync(10)
        transport.fault = "break"
        await eventually(lambda: informer.relists >= 1, 15)
        await client.create(CONFIGMAPS, configmap("after-break"), ns)
        await eventually(lambda: rec.has("add", "after-break"))
    finally:
        await informer.stop()


async def test_shared_factory_gives_one_informer_and_one_watch_per_collection(
    client: ApiClient, ns: str, transport: FaultInjectingTransport, eventually
) -> None:
    factory = SharedInformerFactory(client)
    first = factory.informer(CONFIGMAPS, ns)
    assert factory.informer(CONFIGMAPS, ns) is first
    assert factory.informer(CONFIGMAPS, ns, label_selector={"a": "b"}) is not first
    assert factory.informer(SECRETS, ns) is not first
    controller_a = Recorder().attach(first)
    controller_b = Recorder().attach(factory.informer(CONFIGMAPS, ns))
    factory.start_all()
    try:
        assert await factory.wait_for_sync(10)
        assert all(i.has_synced for i in factory.informers)
        await client.create(CONFIGMAPS, configmap("shared"), ns)
        await eventually(lambda: controller_a.has("add", "shared") and controller_b.has("add", "shared"))
        unselected = [r for r in transport.watches_of("configmaps") if "labelSelector" not in r.url.params]
        assert len(unselected) == 1, "two controllers, one watch"
    finally:
        await factory.stop_all()
