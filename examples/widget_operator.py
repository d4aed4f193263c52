"""An example operator built on ccmkit's client: Widgets (a CRD) get a ConfigMap each, and a status.

It shows the controller shape every ccmkit controller has — an informer feeding a work queue, and a level-based
reconcile that reads the cache and makes the world match — against a CRD, as an operator author would write it.
Run it against any cluster: `python examples/widget_operator.py --server URL` (apply examples/widget-crd.yaml first).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from controlplane.client import (
    CONFIGMAPS,
    ApiClient,
    NotFound,
    RateLimitingQueue,
    Resource,
    SharedInformerFactory,
    meta_namespace_key,
    split_key,
)

WIDGETS = Resource("example.com", "v1", "widgets", "Widget", namespaced=True)
log = logging.getLogger("widget-operator")


class WidgetOperator:
    def __init__(self, client: ApiClient) -> None:
        self.client = client
        self.factory = SharedInformerFactory(client)
        self.widgets = self.factory.informer(WIDGETS)
        self.configmaps = self.factory.informer(CONFIGMAPS, label_selector="example.com/widget")
        self.queue: RateLimitingQueue[str] = RateLimitingQueue()
        self._workers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.widgets.add_handler(on_add=self._enqueue, on_update=lambda old, new: self._enqueue(new),
                                 on_delete=self._enqueue)
        # A ConfigMap someone deleted or edited brings its Widget back to the queue.
        self.configmaps.add_handler(on_delete=self._enqueue_owner, on_update=lambda old, new: self._enqueue_owner(new))
        self.factory.start_all()
        await self.factory.wait_for_sync(30)
        self._workers = [asyncio.create_task(self._work()) for _ in range(2)]

    async def stop(self) -> None:
        self.queue.shutdown()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        await self.factory.stop_all()

    def _enqueue(self, obj: dict[str, Any]) -> None:
        self.queue.add(meta_namespace_key(obj))

    def _enqueue_owner(self, cm: dict[str, Any]) -> None:
        name = (cm["metadata"].get("labels") or {}).get("example.com/widget")
        if name:
            self.queue.add(f"{cm['metadata']['namespace']}/{name}")

    async def _work(self) -> None:
        while (key := await self.queue.get()) is not None:
            try:
                await self.reconcile(key)
                self.queue.forget(key)
            except Exception:  # noqa: BLE001 - retried with backoff, as a controller must
                log.exception("reconcile %s failed", key)
                self.queue.add_rate_limited(key)
            finally:
                self.queue.done(key)

    async def reconcile(self, key: str) -> None:
        namespace, name = split_key(key)
        widget = self.widgets.get(key)
        if widget is None:
            return  # the ConfigMap goes with it: it is owned by the Widget (garbage collection)
        size = widget.get("spec", {}).get("size", "small")
        desired = {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"{name}-config", "namespace": namespace,
                         "labels": {"example.com/widget": name},
                         "ownerReferences": [{"apiVersion": "example.com/v1", "kind": "Widget", "name": name,
                                              "uid": widget["metadata"]["uid"], "controller": True,
                                              "blockOwnerDeletion": True}]},
            "data": {"size": size},
        }
        try:
            current = await self.client.get(CONFIGMAPS, desired["metadata"]["name"], namespace)
        except NotFound:
            await self.client.create(CONFIGMAPS, desired, namespace)
        else:
            if current.get("data") != desired["data"]:
                current["data"] = desired["data"]
                await self.client.update(CONFIGMAPS, current)
        status = {"phase": "Ready", "configMap": desired["metadata"]["name"],
                  "observedGeneration": widget["metadata"].get("generation")}
        if widget.get("status") != status:
            await self.client.patch(WIDGETS, name, {"status": status}, namespace, patch_type="merge",
                                    subresource="status")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", required=True, help="API server URL, e.g. http://127.0.0.1:6443")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    async with ApiClient(args.server) as client:
        operator = WidgetOperator(client)
        await operator.start()
        try:
            await asyncio.Event().wait()
        finally:
            await operator.stop()


if __name__ == "__main__":
    asyncio.run(main())
