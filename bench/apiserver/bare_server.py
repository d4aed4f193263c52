"""The bare HTTP baseline: a FastAPI app answering the benchmark's paths with bodies shaped like ccmkit's, served by
uvicorn exactly as ccmkit's ApiServer serves its app (pre-bound socket with TCP_NODELAY, httptools, uvloop, no
access log, no lifespan).

It does what any JSON endpoint must (route, serialise a dict per request with orjson; parse the body of a POST)
and nothing a Kubernetes API server adds (storage, validation, metadata, watch cache). So "ccmkit / bare" reads as
the share of the bare HTTP stack's speed that ccmkit keeps. Given --bodies, it answers GETs with the very objects
ccmkit answered (get.json, page.json, all.json, parsed once and serialised per request), so both send the same bytes.

Usage: python bench/apiserver/bare_server.py --ready-file F [--bodies DIR]   (writes its URL to F once it serves)
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import uuid
from pathlib import Path

import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

PAYLOAD = "x" * 400  # the benchmark's ConfigMaps carry this, so objects are about 500 bytes of JSON


def configmap(name: str, namespace: str, revision: int) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "creationTimestamp": "2026-11-25T00:00:00Z",
            "resourceVersion": str(revision),
        },
        "data": {"payload": PAYLOAD},
    }


def create_app(list_size: int, bodies: Path | None) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    single = configmap("x", "default", 2)
    items = [configmap(f"cm-{i:05d}", "bench-list", 100 + i) for i in range(list_size)]
    page: dict[str, object] | None = None
    everything: dict[str, object] | None = None
    if bodies is not None:
        single = orjson.loads((bodies / "get.json").read_bytes())
        page = orjson.loads((bodies / "page.json").read_bytes())
        everything = orjson.loads((bodies / "all.json").read_bytes())
    revision = [10_000]

    @app.get("/readyz")
    async def readyz() -> Response:
        return PlainTextResponse("ok")

    @app.get("/api/v1/namespaces/{namespace}/configmaps/{name}")
    async def get_one(namespace: str, name: str) -> Response:
        return Response(orjson.dumps(single), media_type="application/json")

    @app.get("/api/v1/namespaces/{namespace}/configmaps")
    async def list_page(namespace: str, limit: int = 0) -> Response:
        if page is not None and everything is not None:
            return Response(orjson.dumps(page if limit else everything), media_type="application/json")
        page_items = items[:limit] if limit else items
        body = {"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {"resourceVersion": "10000"}, "items": page_items}
        if limit and limit < len(items):
            body["metadata"] = {"resourceVersion": "10000", "continue": "eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ",
                                "remainingItemCount": len(items) - limit}
        return Response(orjson.dumps(body), media_type="application/json")

    @app.post("/api/v1/namespaces/{namespace}/configmaps")
    async def create(namespace: str, request: Request) -> Response:
        obj = orjson.loads(await request.body())
        meta = obj.setdefault("metadata", {})
        revision[0] += 1
        meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp="2026-11-25T00:00:00Z",
                    resourceVersion=str(revision[0]))
        return Response(orjson.dumps(obj), status_code=201, media_type="application/json")

    return app


async def serve(host: str, port: int, ready_file: Path, list_size: int, bodies: Path | None) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    config = uvicorn.Config(create_app(list_size, bodies), log_level="warning", access_log=False, lifespan="off",
                            http="httptools", timeout_keep_alive=60)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.002)
    tmp = ready_file.with_suffix(".tmp")
    tmp.write_text(f"http://{host}:{sock.getsockname()[1]}")
    tmp.replace(ready_file)
    await task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--list-size", type=int, default=1000)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--bodies", type=Path, help="directory with get.json, page.json and all.json to answer with")
    args = parser.parse_args()
    coro = serve(args.host, args.port, args.ready_file, args.list_size, args.bodies)
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


if __name__ == "__main__":
    main()
