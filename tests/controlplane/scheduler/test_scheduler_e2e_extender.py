"""An HTTP scheduler extender served by the test steering placement end to end (filter + prioritize), and one
that binds (refusing the first time, so the scheduler's binding-failure path -- forget, requeue, retry -- runs)."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from scheduler_e2e_helpers import (
    create_nodes,
    eventually,
    node,
    pod,
    running_scheduler,
    wait_bound,
    wait_event,
)

from controlplane.client import PODS, ApiClient
from controlplane.scheduler.config import parse_config
from controlplane.testing import ThreadedApiServer


class Extender:
    """filter: drops nodes listed in ``reject`` (FailedNodes, with a message); prioritize: ``scores`` (0-10);
    bind: answers ``bind_errors`` first (one per call), then binds through the API server at ``api_url``."""

    def __init__(self) -> None:
        self.reject: dict[str, str] = {}
        self.scores: dict[str, int] = {}
        self.calls: list[tuple[str, str]] = []  # (verb, pod name)
        self.bind_errors: list[str] = []
        self.api_url = ""
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:
                args = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                verb = self.path.rsplit("/", 1)[-1]
                if verb == "bind":
                    outer.calls.append((verb, args["PodName"]))
                    out: Any = {"Error": outer.bind_errors.pop(0) if outer.bind_errors else ""}
                    if not out["Error"]:
                        httpx.post(f"{outer.api_url}/api/v1/namespaces/{args['PodNamespace']}/pods/"
                                   f"{args['PodName']}/binding",
                                   json={"apiVersion": "v1", "kind": "Binding",
                                         "metadata": {"name": args["PodName"], "uid": args["PodUID"]},
                                         "target": {"kind": "Node", "name": args["Node"]}}).raise_for_status()
                    self.answer(out)
                    return
                outer.calls.append((verb, args["Pod"]["metadata"]["name"]))
                items = args["Nodes"]["items"]
                if verb == "filter":
                    out = {"Nodes": {"items": [n for n in items if n["metadata"]["name"] not in outer.reject]},
                                "FailedNodes": {n: m for n, m in outer.reject.items()
                                                if any(i["metadata"]["name"] == n for i in items)},
                                "Error": ""}
                else:
                    out = [{"Host": n["metadata"]["name"], "Score": outer.scores.get(n["metadata"]["name"], 0)}
                           for n in items]
                self.answer(out)

            def answer(self, out: Any) -> None:
                data = json.dumps(out).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/extender"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)


@pytest.fixture
def extender() -> Iterator[Extender]:
    ext = Extender()
    ext.thread.start()
    try:
        yield ext
    finally:
        ext.httpd.shutdown()
        ext.httpd.server_close()


@pytest.fixture
async def client(apiserver: ThreadedApiServer) -> AsyncIterator[ApiClient]:
    async with ApiClient(apiserver.url) as c:
        yield c


async def test_extender_filter_and_priorities_decide_placement(apiserver: ThreadedApiServer, client: ApiClient,
                                                               extender: Extender) -> None:
    # The plugins alone would pick "roomy" (most free resources) every time.
    await create_nodes(client, node("roomy", cpu="32", memory="128Gi"), node("n1"), node("n2"))
    extender.reject = {"roomy": "reserved for batch"}
    extender.scores = {"n2": 10}
    cfg = parse_config({"extenders": [{"urlPrefix": extender.url, "filterVerb": "filter",
                                       "prioritizeVerb": "prioritize", "weight": 5}]})
    async with running_scheduler(apiserver.url, cfg):
        for i in range(3):
            await client.create(PODS, pod(f"p{i}"))
        assert [await wait_bound(client, f"p{i}") for i in range(3)] == ["n2", "n2", "n2"]
        assert ("filter", "p0") in extender.calls and ("prioritize", "p0") in extender.calls

        extender.reject.update({"n1": "disk pressure", "n2": "disk pressure"})
        await client.create(PODS, pod("rejected"))
        ev = await wait_event(client, "rejected", "FailedScheduling")
    assert ev["message"].startswith("0/3 nodes are available: 1 reserved for batch, 2 disk pressure.")


async def test_binding_failure_forgets_the_pod_and_retries(apiserver: ThreadedApiServer, client: ApiClient,
                                                           extender: Extender) -> None:
    await create_nodes(client, node("n1", cpu="1"))
    extender.api_url = apiserver.url
    extender.bind_errors = ["the network team says no"]
    cfg = parse_config({"extenders": [{"urlPrefix": extender.url, "bindVerb": "bind"}]})
    async with running_scheduler(apiserver.url, cfg) as svc:
        await client.create(PODS, pod("p", cpu="800m"))
        ev = await wait_event(client, "p", "FailedScheduling")
        assert "the network team says no" in ev["message"]
        # Forgotten, requeued with backoff, bound on the second try; the snapshot holds it exactly once.
        assert await wait_bound(client, "p") == "n1"
        assert [c for c in extender.calls if c[0] == "bind"] == [("bind", "p"), ("bind", "p")]
        await eventually(lambda: svc.cache is not None and svc.cache.pod_count() == 1, message="pod in cache")
        info = svc.cache.node_info("n1") if svc.cache is not None else None
        assert info is not None and info.requested.get("cpu") == 800
