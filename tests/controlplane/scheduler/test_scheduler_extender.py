"""The HTTP extender protocol against a real HTTP server on 127.0.0.1 (plain http.server in a thread)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from scheduler_builders import cluster, node, pod

from controlplane.scheduler.config import ExtenderConfig, ManagedResource
from controlplane.scheduler.extender import ExtenderError, HTTPExtender
from controlplane.scheduler.podinfo import PodInfo


class ExtenderServer:
    """Answers filter/prioritize/bind/preempt like a scheduler extender and records what it was sent."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, Any]] = []
        self.reject: dict[str, str] = {}  # node -> message (FailedNodes)
        self.unresolvable: dict[str, str] = {}
        self.scores: dict[str, int] = {}
        self.fail_with: int | None = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                verb = self.path.rsplit("/", 1)[-1]
                outer.requests.append((verb, body))
                if outer.fail_with:
                    self.send_response(outer.fail_with)
                    self.end_headers()
                    return
                out = outer.answer(verb, body)
                data = json.dumps(out).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/scheduler"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def answer(self, verb: str, body: dict[str, Any]) -> Any:
        if verb == "filter":
            names = body["NodeNames"] if body["NodeNames"] is not None else \
                [n["metadata"]["name"] for n in body["Nodes"]["items"]]
            keep = [n for n in names if n not in self.reject and n not in self.unresolvable]
            out: dict[str, Any] = {"FailedNodes": self.reject, "FailedAndUnresolvableNodes": self.unresolvable,
                                   "Error": ""}
            if body["NodeNames"] is not None:
                out["NodeNames"] = keep
            else:
                out["Nodes"] = {"items": [n for n in body["Nodes"]["items"] if n["metadata"]["name"] in keep]}
            return out
        if verb == "prioritize":
            names = body["NodeNames"] if body["NodeNames"] is not None else \
                [n["metadata"]["name"] for n in body["Nodes"]["items"]]
            return [{"Host": n, "Score": self.scores.get(n, 0)} for n in names]
        if verb == "bind":
            return {"Error": "" if body["Node"] != "forbidden" else "binding refused"}
        if verb == "preempt":
            meta = body["NodeNameToMetaVictims"]
            # keep only the first candidate node
            first = sorted(meta)[0]
            return {"NodeNameToMetaVictims": {first: meta[first]}}
        return {}

    def __enter__(self) -> ExtenderServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[ExtenderServer]:
    with ExtenderServer() as s:
        yield s


def ext(server: ExtenderServer, **kw: Any) -> HTTPExtender:
    base = dict(url_prefix=server.url, filter_verb="filter", prioritize_verb="prioritize", weight=1)
    base.update(kw)
    return HTTPExtender(ExtenderConfig(**base))


async def test_filter_sends_full_nodes_or_names(server):
    cache, _ = cluster(node("a"), node("b"), node("c"))
    server.reject = {"b": "b is full"}
    server.unresolvable = {"c": "c is wrong"}
    pi = PodInfo(pod("p"))
    for cache_capable in (False, True):
        e = ext(server, node_cache_capable=cache_capable)
        kept, failed, unresolvable = await e.filter(pi, cache.node_infos())
        await e.aclose()
        assert [n.name for n in kept] == ["a"]
        assert failed == {"b": "b is full"} and unresolvable == {"c": "c is wrong"}
    full, names = server.requests[0][1], server.requests[1][1]
    assert full["NodeNames"] is None and full["Nodes"]["items"][0]["metadata"]["name"] == "a"
    assert full["Pod"]["metadata"]["name"] == "p"
    assert names["Nodes"] is None and names["NodeNames"] == ["a", "b", "c"]


async def test_scheduling_with_extender_filter_and_prioritize(server):
    cache, sched = cluster(node("a"), node("b"), node("c"))
    sched.extenders.append(ext(server, weight=2, node_cache_capable=True))
    server.reject = {"a": "nope"}
    server.scores = {"c": 10}
    r = await sched.schedule_one_async(pod("p"))
    assert r.suggested_host == "c"
    server.reject = {"a": "nope", "b": "nope", "c": "nope"}
    r = await sched.schedule_one_async(pod("q"))
    assert r.suggested_host is None
    assert str(r.error).startswith("0/3 nodes are available: 3 nope.")
    assert "Extender" in r.fit_error.diagnosis.unschedulable_plugins
    for e in sched.extenders:
        await e.aclose()


async def test_ignorable_extender_errors_are_skipped(server):
    cache, sched = cluster(node("a"))
    server.fail_with = 500
    sched.extenders.append(ext(server, ignorable=True))
    assert (await sched.schedule_one_async(pod("p"))).suggested_host == "a"
    sched.extenders[:] = [ext(server, ignorable=False)]
    r = await sched.schedule_one_async(pod("p"))
    assert isinstance(r.error, ExtenderError) and "code 500" in str(r.error)


async def test_managed_resources_limit_interest(server):
    e = ext(server, managed_resources=[ManagedResource("example.com/foo")])
    assert not e.is_interested(PodInfo(pod("plain")))
    assert e.is_interested(PodInfo(pod("wants", requests={"example.com/foo": "1"})))
    await e.aclose()


async def test_bind_verb(server):
    e = ext(server, bind_verb="bind")
    pi = PodInfo(pod("p"))
    await e.bind(pi, "a")
    verb, body = server.requests[-1]
    assert verb == "bind" and body == {"PodName": "p", "PodNamespace": "default", "PodUID": pi.uid, "Node": "a"}
    with pytest.raises(ExtenderError, match="binding refused"):
        await e.bind(pi, "forbidden")
    await e.aclose()


async def test_preempt_verb_trims_candidates(server):
    low = [pod(f"low{i}", cpu="1", memory=None, node_name=n, priority=0) for i, n in enumerate(["a", "b"])]
    cache, sched = cluster(node("a", cpu="1"), node("b", cpu="1"), pods=tuple(low))
    sched.extenders.append(ext(server, filter_verb="", prioritize_verb="", preempt_verb="preempt",
                               node_cache_capable=True))
    r = await sched.schedule_one_async(pod("hi", cpu="1", memory=None, priority=10))
    assert r.post_filter.nominated_node_name == "a"
    verb, body = server.requests[-1]
    assert verb == "preempt" and set(body["NodeNameToMetaVictims"]) == {"a", "b"}
    assert body["NodeNameToMetaVictims"]["a"]["Pods"] == [{"UID": PodInfo(low[0]).uid}]
    await sched.extenders[0].aclose()
