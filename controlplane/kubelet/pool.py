"""KubeletPool: one or many kubelets in one process, sharing everything that does not have to be per node.

A thousand simulated nodes must not open a thousand pod watches, lease loops and HTTP servers. The pool opens one
API client, one pod informer (``spec.nodeName=<node>`` when it runs a single node, as a real kubelet does; all pods,
dispatched by ``spec.nodeName``, when it runs many), one work queue of pod uids with a few workers, one loop each
for leases, node status and container relisting (PLEG), and one HTTP server for logs, exec and stats. What the API
server sees stays per node: one Node, one Lease and the status of each pod, written by that node's Kubelet.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import httpx

from controlplane.client import (
    CONFIGMAPS,
    LEASES,
    PODS,
    SECRETS,
    ApiClient,
    ApiError,
    ClientConfig,
    Conflict,
    DelayingQueue,
    Informer,
    NotFound,
    component_user_agent,
)
from controlplane.client.protocol import copy_object

from . import nodestatus
from .apiproxy import LOCAL_KUBELETS
from .config import KubeletOptions, NodeConfig
from .cri.api import ImageService, RuntimeService
from .kubelet import Kubelet

log = logging.getLogger(__name__)

# Heartbeats (Lease renewals, node status) are spread over their period in batches this far apart.
SPREAD_TICK = 0.05


@dataclass
class NodeRuntime:
    """A node to run: its config and the CRI services behind it."""

    config: NodeConfig
    runtime: RuntimeService
    images: ImageService


class KubeletPool:
    """Runs ``nodes`` against the API server at ``api``. ``own_runtimes`` closes each runtime (``aclose()``) on
    stop, which for the process runtime kills what it runs."""

    def __init__(self, api: str | ClientConfig, nodes: Sequence[NodeRuntime], options: KubeletOptions | None = None,
                 *, own_runtimes: bool = False) -> None:
        if not nodes:
            raise ValueError("a kubelet pool needs at least one node")
        names = [n.config.name for n in nodes]
        if len(set(names)) != len(names):
            raise ValueError("node names must be unique")
        self.api = api
        self.options = options or KubeletOptions()
        self.own_runtimes = own_runtimes
        # One connection per possible request in flight (sync workers, the lease/status loops, the watch) and no
        # more: httpcore's pool does O(connections x queued requests) bookkeeping per request, which with the
        # client's default of 256 connections, or with requests queued for a connection, became the pool's main
        # CPU cost under load.
        connections = self.options.sync_workers + self.options.api_concurrency + 4
        self.client: ApiClient = ApiClient(api, user_agent=component_user_agent("kubelet"),
                                           limits=httpx.Limits(max_connections=connections,
                                                                    max_keepalive_connections=connections))
        self.http = httpx.AsyncClient(verify=False, trust_env=False, follow_redirects=False)
        self.queue: DelayingQueue[str] = DelayingQueue()
        self.server_port = 0
        self.server: Any = None
        self.kubelets: dict[str, Kubelet] = {}
        self._owners: dict[str, Kubelet] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._spawned: set[asyncio.Task[Any]] = set()
        self._informer: Informer | None = None
        self._api_address = urlsplit(self.client.config.server).netloc
        self._nodes = list(nodes)
        for n in nodes:
            self.kubelets[n.config.name] = Kubelet(n.config, n.runtime, n.images, self)

    # -- services the kubelets use ------------------------------------------------------------------------------

    def enqueue(self, uid: str) -> None:
        self.queue.add(uid)

    def enqueue_after(self, uid: str, delay: float) -> None:
        self.queue.add_after(uid, delay)

    def own(self, uid: str, kubelet: Kubelet) -> None:
        self._owners[uid] = kubelet

    def disown(self, uid: str) -> None:
        self._owners.pop(uid, None)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._spawned.add(task)
        task.add_done_callback(self._spawn_done)

    def _spawn_done(self, task: asyncio.Task[Any]) -> None:
        self._spawned.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("kubelet background task failed: %r", task.exception())

    async def get_object(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A ConfigMap or Secret for env and volumes, read from the API server (None if it does not exist)."""
        resource = CONFIGMAPS if kind == "ConfigMap" else SECRETS
        try:
            return await self.client.get(resource, name, namespace)
        except NotFound:
            return None

    def kubelet_for_pod(self, namespace: str, name: str) -> Kubelet | None:
        for k in self.kubelets.values():
            if k.by_key.get(f"{namespace}/{name}"):
                return k
        return None

    # -- lifecycle ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        opts = self.options
        Path(opts.data_dir).mkdir(parents=True, exist_ok=True)
        if opts.server_host is not None:
            from .server import KubeletServer

            self.server = KubeletServer(self, opts.server_host, opts.server_port)
            await self.server.start()
            self.server_port = self.server.port
        await self._limited(Kubelet.register)
        await self._limited(self._renew_lease)
        selector = f"spec.nodeName={next(iter(self.kubelets))}" if len(self.kubelets) == 1 else None
        self._informer = Informer(self.client, PODS, field_selector=selector)
        self._informer.add_handler(self._on_add, self._on_update, self._on_delete)
        self._informer.start()
        loop = asyncio.get_running_loop()
        for i in range(max(1, opts.sync_workers)):
            self._tasks.append(loop.create_task(self._worker(), name=f"kubelet-sync-{i}"))
        self._tasks.append(loop.create_task(self._spread_every(opts.lease_renew_interval, self._renew_lease),
                                            name="kubelet-leases"))
        self._tasks.append(loop.create_task(self._spread_every(opts.node_status_update_interval,
                                                               Kubelet.write_node_status),
                                            name="kubelet-node-status"))
        self._tasks.append(loop.create_task(self._every(opts.pleg_period, self._relist), name="kubelet-pleg"))
        if self.server is not None:
            for name in self.kubelets:
                base = self.server.url if len(self.kubelets) == 1 else f"{self.server.url}/nodes/{name}"
                LOCAL_KUBELETS.register(self._api_address, name, base)
        await self._informer.wait_for_sync()

    async def stop(self) -> None:
        for name in self.kubelets:
            LOCAL_KUBELETS.unregister(self._api_address, name)
        self.queue.shutdown()
        for task in [*self._tasks, *self._spawned]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._spawned, return_exceptions=True)
        self._tasks.clear()
        if self._informer is not None:
            await self._informer.stop()
        for k in self.kubelets.values():
            await k.shutdown()
        if self.server is not None:
            await self.server.stop()
        await self.http.aclose()
        await self.client.close()
        if self.own_runtimes:
            for n in self._nodes:
                close = getattr(n.runtime, "aclose", None)
                if close is not None:
                    try:
                        await close()
                    except Exception:
                        log.exception("closing the runtime of %s failed", n.config.name)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the shared loops -----------------------------------------------------------------------------------------

    async def _limited(self, action: Callable[[Kubelet], Awaitable[Any]],
                       kubelets: Iterable[Kubelet] | None = None) -> None:
        """``action(kubelet)`` for every node (or those given), at most ``api_concurrency`` at a time."""
        semaphore = asyncio.Semaphore(self.options.api_concurrency)

        async def one(k: Kubelet) -> None:
            async with semaphore:
                try:
                    await action(k)
                except Exception as e:  # noqa: BLE001 - one node's failure must not stop the others' heartbeat
                    log.warning("kubelet %s: %r", k.name, e)

        await asyncio.gather(*(one(k) for k in (self.kubelets.values() if kubelets is None else kubelets)))

    async def _every(self, period: float, action: Any) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await action()
            except Exception:
                log.exception("kubelet loop %s failed", getattr(action, "__name__", action))

    async def _spread_every(self, period: float, action: Callable[[Kubelet], Awaitable[Any]]) -> None:
        """``action(kubelet)`` for every node once per ``period``, spread evenly over the period.

        Real kubelets each keep their own clock, so their heartbeats arrive spread out. A thousand of them fired at
        one instant would stall the API server and every watcher (the scheduler, the node controller) for a
        moment each period, which shows up as a pod-startup latency tail no real cluster has.
        """
        loop = asyncio.get_running_loop()
        while True:
            kubelets = list(self.kubelets.values())
            batches = max(1, min(len(kubelets), int(period / SPREAD_TICK)))
            size = -(-len(kubelets) // batches)
            for start in range(0, len(kubelets), size):
                began = loop.time()
                await self._limited(action, kubelets[start:start + size])
                await asyncio.sleep(max(0.0, period / batches - (loop.time() - began)))

    async def _renew_lease(self, k: Kubelet) -> None:
        opts = self.options
        try:
            if k.lease is None:
                try:
                    k.lease = await self.client.get(LEASES, k.name, nodestatus.NODE_LEASE_NAMESPACE)
                except NotFound:
                    k.lease = await self.client.create(LEASES, nodestatus.lease_object(k.name, k.node_uid,
                                                                                       opts.lease_duration))
                    return
            lease = copy_object(k.lease)
            lease["spec"] = {**(lease.get("spec") or {}), "holderIdentity": k.name,
                             "leaseDurationSeconds": opts.lease_duration, "renewTime": nodestatus.micro_time()}
            k.lease = await self.client.update(LEASES, lease)
        except (Conflict, NotFound):
            k.lease = None  # someone else wrote or removed it: re-read next round
            raise

    async def _relist(self) -> None:
        for k in self.kubelets.values():
            await k.relist()

    async def _worker(self) -> None:
        while (uid := await self.queue.get()) is not None:
            try:
                kubelet = self._owners.get(uid)
                if kubelet is not None:
                    await kubelet.sync(uid)
            except asyncio.CancelledError:
                raise
            except ApiError as e:
                log.warning("syncing pod %s failed: %s; retrying", uid, e)
                self.queue.add_after(uid, 1.0)
            except Exception:
                log.exception("syncing pod %s failed; retrying", uid)
                self.queue.add_after(uid, 1.0)
            finally:
                self.queue.done(uid)

    # -- informer handlers ----------------------------------------------------------------------------------------

    def _kubelet_of(self, pod: dict[str, Any]) -> Kubelet | None:
        return self.kubelets.get((pod.get("spec") or {}).get("nodeName") or "")

    def _on_add(self, pod: dict[str, Any]) -> None:
        if (k := self._kubelet_of(pod)) is not None:
            k.pod_updated(pod)

    def _on_update(self, old: dict[str, Any], pod: dict[str, Any]) -> None:
        if (k := self._kubelet_of(pod)) is not None:
            k.pod_updated(pod, old)

    def _on_delete(self, pod: dict[str, Any]) -> None:
        if (k := self._kubelet_of(pod)) is not None:
            k.pod_deleted(pod)

    # -- reads for tests, benchmarks and the metrics API ----------------------------------------------------------

    async def stats_summary(self, node: str) -> dict[str, Any]:
        return await self.kubelets[node].stats_summary()
