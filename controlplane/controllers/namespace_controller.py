"""The namespace controller: empties a Terminating namespace, then releases its ``kubernetes`` finalizer.

A namespace DELETE only marks it Terminating; the API server keeps it while ``spec.finalizers`` holds
"kubernetes". This controller deletes every namespaced object in it — of every kind discovery lists with list and
delete verbs, custom resources included — waits (requeueing) until nothing is left, including objects held by their
own finalizers or pods still shutting down, and then PUTs ``/finalize`` without "kubernetes" so the API server
removes the namespace. Progress is reported in the namespace's conditions, with upstream's types and reasons.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from typing import Any

from controlplane.client import ApiClient, ApiError, NotFound, SharedInformerFactory
from controlplane.client.resources import NAMESPACES
from controlplane.controllers.base import DONE, ControllerContext, Enqueue, Result, RetryLater
from controlplane.controllers.discovery import ApiResource, discover

log = logging.getLogger(__name__)

Obj = dict[str, Any]

FINALIZER = "kubernetes"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(type_: str, failed: bool, reason_ok: str, message_ok: str, reason_bad: str, message_bad: str) -> Obj:
    return {"type": type_, "status": "True" if failed else "False",
            "reason": reason_bad if failed else reason_ok, "message": message_bad if failed else message_ok}


class NamespaceController:
    name = "namespace"

    def __init__(self, ctx: ControllerContext | None = None) -> None:
        ctx = ctx or ControllerContext()
        self.workers = int(ctx.option("concurrent_namespace_syncs", 2))
        self.max_wait = float(ctx.option("namespace_max_requeue", 5.0))
        self._attempts: Counter[str] = Counter()

    def setup(self, client: ApiClient, informers: SharedInformerFactory, enqueue: Enqueue) -> None:
        self.client = client
        self.namespaces = informers.informer(NAMESPACES)

        def changed(ns: Obj, *rest: Obj) -> None:
            ns = rest[-1] if rest else ns
            if ns["metadata"].get("deletionTimestamp"):
                enqueue(ns["metadata"]["name"])

        self.namespaces.add_handler(on_add=changed, on_update=changed)

    async def reconcile(self, key: str) -> Result:
        cached = self.namespaces.get(key)
        if cached is None or not cached["metadata"].get("deletionTimestamp"):
            self._attempts.pop(key, None)
            return DONE
        try:
            ns = await self.client.get(NAMESPACES, key)  # decide on the live object, not a possibly old copy
        except NotFound:
            self._attempts.pop(key, None)
            return DONE
        if not ns["metadata"].get("deletionTimestamp") or FINALIZER not in ((ns.get("spec") or {}).get("finalizers")
                                                                             or []):
            self._attempts.pop(key, None)
            return DONE

        discovery = await discover(self.client)
        remaining: dict[str, int] = {}
        finalizers: Counter[str] = Counter()
        failures: list[str] = []
        estimate = 0.0
        for api_resource in discovery.namespaced_deletable():
            try:
                left, wait = await self._delete_all(api_resource, key, finalizers)
            except ApiError as exc:
                failures.append(f"{api_resource.resource}: {exc}")
                continue
            if left:
                r = api_resource.resource
                remaining[f"{r.plural}.{r.group}"] = left
                estimate = max(estimate, wait)

        conditions = [
            _condition("NamespaceDeletionDiscoveryFailure", bool(discovery.failed),
                       "ResourcesDiscovered", "All resources successfully discovered",
                       "DiscoveryFailed", f"Discovery failed for some groups, {len(discovery.failed)} failing: "
                       + ", ".join(f"{gv}: {err}" for gv, err in sorted(discovery.failed.items()))),
            _condition("NamespaceDeletionGroupVersionParsingFailure", False, "ParsedGroupVersions",
                       "All legacy kube types successfully parsed", "", ""),
            _condition("NamespaceDeletionContentFailure", bool(failures), "ContentDeleted",
                       "All content successfully deleted, may be waiting on finalization",
                       "ContentDeletionFailed", f"Failed to delete all resource types, {len(failures)} remaining: "
                       + ", ".join(sorted(failures))),
            _condition("NamespaceContentRemaining", bool(remaining), "ContentRemoved",
                       "All content successfully removed", "SomeResourcesRemain",
                       "Some resources are remaining: " + ", ".join(
                           f"{name} has {count} resource instances" for name, count in sorted(remaining.items()))),
            _condition("NamespaceFinalizersRemaining", bool(finalizers), "ContentHasNoFinalizers",
                       "All content-preserving finalizers finished", "SomeFinalizersRemain",
                       "Some content in the namespace has finalizers remaining: " + ", ".join(
                           f"{f} in {count} resource instances" for f, count in sorted(finalizers.items()))),
        ]
        ns = await self._update_conditions(ns, conditions)

        if failures or discovery.failed:
            # Content of an undiscoverable group may still be there: finalizing now could leak it.
            raise RetryLater(f"namespace {key}: deletion incomplete: {'; '.join(failures) or discovery.failed}")
        if remaining:
            self._attempts[key] += 1
            backoff = min(self.max_wait, 0.1 * 2 ** min(self._attempts[key], 10))
            return Result(requeue_after=min(self.max_wait, max(backoff, estimate)) if estimate else backoff)

        spec_finalizers = [f for f in (ns.get("spec") or {}).get("finalizers") or [] if f != FINALIZER]
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": ns["metadata"],
                "spec": {**(ns.get("spec") or {}), "finalizers": spec_finalizers}}
        try:
            await self.client.update_subresource(NAMESPACES, body, "finalize")
        except NotFound:
            pass
        self._attempts.pop(key, None)
        log.info("namespace %s: all content deleted; finalized", key)
        return DONE

    async def _delete_all(self, api_resource: ApiResource, namespace: str, finalizers: Counter[str]
                          ) -> tuple[int, float]:
        """Delete every object of one resource in the namespace; return how many remain and how long the
        slowest (a pod in its grace period) may still take."""
        resource = api_resource.resource
        listing = await self.client.list(resource, namespace)
        items = listing.get("items") or []
        if not items:
            return 0, 0.0
        pending = [o for o in items if not o["metadata"].get("deletionTimestamp")]
        if pending:
            if api_resource.can("deletecollection"):
                try:
                    await self.client.delete_collection(resource, namespace, propagation_policy="Background")
                except ApiError as exc:
                    if exc.code not in (404, 405):
                        raise
                    await self._delete_each(resource, namespace, pending)
            else:
                await self._delete_each(resource, namespace, pending)
            items = (await self.client.list(resource, namespace)).get("items") or []
        wait = 0.0
        for obj in items:
            meta = obj["metadata"]
            for f in meta.get("finalizers") or []:
                finalizers[f] += 1
            if meta.get("deletionGracePeriodSeconds"):
                wait = max(wait, float(meta["deletionGracePeriodSeconds"]))
        return len(items), wait

    async def _delete_each(self, resource: Any, namespace: str, items: list[Obj]) -> None:
        for obj in items:
            try:
                await self.client.delete(resource, obj["metadata"]["name"], namespace, propagation_policy="Background")
            except NotFound:
                pass

    async def _update_conditions(self, ns: Obj, wanted: list[Obj]) -> Obj:
        status = dict(ns.get("status") or {})
        current = {c.get("type"): c for c in status.get("conditions") or []}
        changed = False
        merged = []
        for cond in wanted:
            old = current.pop(cond["type"], None)
            same = old is not None and all(old.get(k) == cond[k] for k in ("status", "reason", "message"))
            if same:
                merged.append(old)
                continue
            changed = True
            transition = old.get("lastTransitionTime") if old is not None and old.get("status") == cond["status"] \
                else _now()
            merged.append({**cond, "lastTransitionTime": transition})
        merged.extend(current.values())
        if not changed:
            return ns
        status["conditions"] = merged
        try:
            return await self.client.update_status(NAMESPACES, {**ns, "status": status})
        except ApiError as exc:
            # Conditions are informative; deletion proceeds with the object we have.
            log.info("namespace %s: updating conditions failed: %s", ns["metadata"]["name"], exc)
            return await self.client.get(NAMESPACES, ns["metadata"]["name"])
