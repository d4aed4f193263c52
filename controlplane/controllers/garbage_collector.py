"""The garbage collector: deletes objects whose owners are gone, and carries out foreground and orphan deletion.

As upstream, it keeps a graph of ``ownerReferences`` (uid -> node with owners and dependents) fed by informers over
every resource discovery lists with list, watch and delete (custom resources included; discovery is re-read
periodically to pick up new CRDs). Two kinds of work go through one queue, keyed by uid:

- ``delete/<uid>`` (attemptToDelete): check the object's owners *live* against the API server; if none is left it is
  deleted (background, or with the policy its own finalizers ask for); if some are dangling beside a live one, only
  the dangling references are removed. For an owner being deleted in the foreground, it removes the
  ``foregroundDeletion`` finalizer once no dependent with ``blockOwnerDeletion`` remains.
- ``orphan/<uid>`` (attemptToOrphan): an owner deleted with the ``orphan`` finalizer has its references removed from
  every dependent, then the finalizer.

An owner the graph has not seen (its kind not watched, or not listed yet) is a *virtual* node, verified with a GET.
Decisions never rest on the cache alone: a missing owner is confirmed by the API server before anything is deleted.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from controlplane.client import ApiClient, Conflict, NotFound, Resource, SharedInformerFactory, resource_for
from controlplane.controllers.base import DONE, ControllerContext, Enqueue, Result, RetryLater
from controlplane.controllers.discovery import Discovery, discover

log = logging.getLogger(__name__)

Obj = dict[str, Any]

FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"
# Upstream's ignoredResources: events are many, short-lived, and never owners.
IGNORED = frozenset({("", "events"), ("events.k8s.io", "events")})


@dataclass(eq=False)
class _Node:
    uid: str
    api_version: str
    kind: str
    namespace: str | None
    name: str
    resource: Resource | None = None
    owners: list[Obj] = field(default_factory=list)
    dependents: set[str] = field(default_factory=set)
    virtual: bool = False
    deleting_dependents: bool = False

    def describe(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name} ({self.uid})"


class _AbsentOwners:
    """Owners the API server said do not exist (upstream's absentOwnerCache): an LRU of uids."""

    def __init__(self, size: int = 1000) -> None:
        self.size = size
        self._uids: OrderedDict[str, None] = OrderedDict()

    def add(self, uid: str) -> None:
        self._uids[uid] = None
        self._uids.move_to_end(uid)
        while len(self._uids) > self.size:
            self._uids.popitem(last=False)

    def __contains__(self, uid: str) -> bool:
        return uid in self._uids


class GarbageCollector:
    name = "garbagecollector"

    def __init__(self, ctx: ControllerContext | None = None) -> None:
        ctx = ctx or ControllerContext()
        self.workers = int(ctx.option("concurrent_gc_syncs", 4))
        self.resync_period = float(ctx.option("gc_resync_period", 30.0))
        self.clock = ctx.clock
        self.nodes: dict[str, _Node] = {}
        self.absent = _AbsentOwners()
        self.discovery = Discovery()
        self.monitored: set[Resource] = set()
        self._unmapped: set[str] = set()  # keys that failed on a kind discovery did not know yet

    # -- wiring ------------------------------------------------------------------------------------------------

    async def setup(self, client: ApiClient, informers: SharedInformerFactory, enqueue: Enqueue) -> None:
        self.client = client
        self.informers = informers
        self.enqueue = enqueue
        try:
            self.discovery = await discover(client)
        except Exception as exc:  # noqa: BLE001 - run() retries discovery; the rest of the manager starts anyway
            log.warning("garbage collector: discovery failed: %r; retrying in the background", exc)
            return
        self._monitor_new()

    def _monitor_new(self) -> list[Resource]:
        added = []
        for api_resource in self.discovery.watchable():
            r = api_resource.resource
            if not api_resource.can("delete") or (r.group, r.plural) in IGNORED or r in self.monitored:
                continue
            self.monitored.add(r)
            self._watch(r)
            added.append(r)
        return added

    def _watch(self, resource: Resource) -> None:
        def on_add(obj: Obj) -> None:
            self._observe(resource, obj)

        def on_update(old: Obj, new: Obj) -> None:
            self._observe(resource, new)

        self.informers.informer(resource).add_handler(on_add=on_add, on_update=on_update,
                                                      on_delete=self._observed_deletion)

    async def run(self) -> None:
        """Re-read discovery periodically so new resources (CRDs) join the graph."""
        while True:
            await self.clock.sleep(self.resync_period if self.monitored else 1.0)
            try:
                self.discovery = await discover(self.client)
            except Exception as exc:  # noqa: BLE001 - try again next period
                log.warning("garbage collector: discovery failed: %r", exc)
                continue
            added = self._monitor_new()
            if added:
                log.info("garbage collector: now monitoring %s", ", ".join(map(str, added)))
                self.informers.start_all()
                # Work that failed for want of these kinds need not wait out its backoff.
                for key in self._unmapped:
                    self.enqueue(key)
                self._unmapped.clear()

    # -- the graph (informer handlers; synchronous, so each event applies atomically) ----------------------------

    def _observe(self, resource: Resource, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        uid = meta.get("uid")
        if not uid:
            return
        refs = [r for r in meta.get("ownerReferences") or [] if r.get("uid")]
        node = self.nodes.get(uid)
        if node is None:
            node = _Node(uid, obj.get("apiVersion") or resource.api_version, obj.get("kind") or resource.kind,
                         meta.get("namespace"), meta.get("name", ""), resource)
            self.nodes[uid] = node
            old_refs: list[Obj] = []
        else:
            old_refs = node.owners
            if node.virtual:
                node.virtual = False
                node.api_version = obj.get("apiVersion") or resource.api_version
                node.kind = obj.get("kind") or resource.kind
                node.namespace, node.name, node.resource = meta.get("namespace"), meta.get("name", ""), resource
        self._relink(node, old_refs, refs)
        node.owners = refs

        finalizers = meta.get("finalizers") or []
        deleting = bool(meta.get("deletionTimestamp"))
        if deleting and ORPHAN in finalizers:
            self.enqueue(f"orphan/{uid}")
        if deleting and FOREGROUND in finalizers:
            if not node.deleting_dependents:
                node.deleting_dependents = True
                for dep in node.dependents:
                    self.enqueue(f"delete/{dep}")
            self.enqueue(f"delete/{uid}")
        else:
            node.deleting_dependents = False

    def _relink(self, node: _Node, old_refs: list[Obj], new_refs: list[Obj]) -> None:
        old = {r["uid"]: r for r in old_refs}
        new = {r["uid"]: r for r in new_refs}
        for owner_uid, ref in new.items():
            owner = self.nodes.get(owner_uid)
            if owner is None:
                owner = self._virtual_owner(ref, node)
                self.nodes[owner_uid] = owner
                self.enqueue(f"delete/{owner_uid}")  # verify the owner exists
            if node.uid not in owner.dependents:
                owner.dependents.add(node.uid)
                if owner.deleting_dependents or owner_uid in self.absent:
                    self.enqueue(f"delete/{node.uid}")
            previous = old.get(owner_uid)
            if previous is not None and previous.get("blockOwnerDeletion") and not ref.get("blockOwnerDeletion") \
                    and owner.deleting_dependents:
                self.enqueue(f"delete/{owner_uid}")
        for owner_uid in old.keys() - new.keys():
            owner = self.nodes.get(owner_uid)
            if owner is None:
                continue
            owner.dependents.discard(node.uid)
            if owner.deleting_dependents:
                self.enqueue(f"delete/{owner_uid}")
            if owner.virtual and not owner.dependents:
                del self.nodes[owner_uid]

    def _virtual_owner(self, ref: Obj, dependent: _Node) -> _Node:
        resource = self._resource_for(ref.get("apiVersion", ""), ref.get("kind", ""))
        namespaced = resource.namespaced if resource is not None else True
        return _Node(ref["uid"], ref.get("apiVersion", ""), ref.get("kind", ""),
                     dependent.namespace if namespaced else None, ref.get("name", ""), resource, virtual=True)

    def _observed_deletion(self, obj: Obj) -> None:
        uid = (obj.get("metadata") or {}).get("uid")
        if uid:
            self._remove(uid)

    def _remove(self, uid: str) -> None:
        node = self.nodes.pop(uid, None)
        if node is None:
            return
        self.absent.add(uid)
        for ref in node.owners:
            owner = self.nodes.get(ref["uid"])
            if owner is None:
                continue
            owner.dependents.discard(uid)
            if owner.deleting_dependents:
                self.enqueue(f"delete/{owner.uid}")
            if owner.virtual and not owner.dependents:
                self.nodes.pop(owner.uid, None)
        for dep in node.dependents:
            self.enqueue(f"delete/{dep}")

    def _resource_for(self, api_version: str, kind: str) -> Resource | None:
        found = self.discovery.resource_for(api_version, kind)
        if found is not None:
            return found
        try:
            return resource_for(api_version, kind)
        except KeyError:
            return None

    # -- work --------------------------------------------------------------------------------------------------

    async def reconcile(self, key: str) -> Result:
        action, _, uid = key.partition("/")
        node = self.nodes.get(uid)
        if node is None:
            return DONE
        try:
            if action == "orphan":
                await self._attempt_to_orphan(node)
            else:
                await self._attempt_to_delete(node)
        except RetryLater:
            self._unmapped.add(key)
            raise
        return DONE

    async def _get_live(self, node: _Node) -> Obj | None:
        """The object as the API server has it now; None if it is gone (or replaced by one with another uid)."""
        resource = node.resource or self._resource_for(node.api_version, node.kind)
        if resource is None:
            raise RetryLater(f"no resource for apiVersion={node.api_version} kind={node.kind}")
        try:
            obj = await self.client.get(resource, node.name, node.namespace if resource.namespaced else None)
        except NotFound:
            return None
        if (obj.get("metadata") or {}).get("uid") != node.uid:
            return None
        return obj

    async def _attempt_to_delete(self, node: _Node) -> None:
        latest = await self._get_live(node)
        if latest is None:
            # Gone: as upstream's virtual delete event, drop it from the graph so its dependents are examined.
            log.debug("garbage collector: %s is absent", node.describe())
            self._remove(node.uid)
            return
        if node.virtual:
            return  # exists; the informer (if its kind is watched) will fill the node in
        meta = latest["metadata"]
        finalizers = meta.get("finalizers") or []
        if meta.get("deletionTimestamp"):
            if FOREGROUND in finalizers:
                await self._process_deleting_dependents(node, latest)
            return
        refs = [r for r in meta.get("ownerReferences") or [] if r.get("uid")]
        if not refs:
            return
        solid, dangling, waiting = await self._classify(node, refs)
        if solid:
            if dangling or waiting:
                drop = {r["uid"] for r in dangling + waiting}
                kept = [r for r in refs if r["uid"] not in drop]
                log.info("garbage collector: removing dangling owner references %s from %s",
                         sorted(drop), node.describe())
                await self._patch_meta(node, latest, {"ownerReferences": kept})
            return
        if waiting and node.dependents:
            # Its owner waits for it and it has dependents of its own: delete it in the foreground too, so the
            # wait propagates down the chain (upstream's rule). A dependent already waiting on it would deadlock,
            # so first unblock our own references if one does.
            if any(self.nodes.get(d) is not None and self.nodes[d].deleting_dependents for d in node.dependents):
                unblocked = [{**r, "blockOwnerDeletion": False} if r.get("blockOwnerDeletion") else r for r in refs]
                latest = await self._patch_meta(node, latest, {"ownerReferences": unblocked})
            await self._delete(node, "Foreground")
            return
        policy = "Orphan" if ORPHAN in finalizers else "Foreground" if FOREGROUND in finalizers else "Background"
        await self._delete(node, policy)

    async def _classify(self, node: _Node, refs: list[Obj]) -> tuple[list[Obj], list[Obj], list[Obj]]:
        solid: list[Obj] = []
        dangling: list[Obj] = []
        waiting: list[Obj] = []
        for ref in refs:
            owner_uid = ref["uid"]
            if owner_uid in self.absent:
                dangling.append(ref)
                continue
            resource = self._resource_for(ref.get("apiVersion", ""), ref.get("kind", ""))
            if resource is None:
                # Deleting on a mapping failure (a CRD just removed, discovery lagging) would be unrecoverable.
                raise RetryLater(f"{node.describe()}: no resource for owner apiVersion={ref.get('apiVersion')} "
                                  f"kind={ref.get('kind')}")
            if resource.namespaced and not node.namespace:
                dangling.append(ref)  # a cluster-scoped object cannot be owned by a namespaced one
                continue
            try:
                owner = await self.client.get(resource, ref.get("name", ""),
                                              node.namespace if resource.namespaced else None)
            except NotFound:
                self.absent.add(owner_uid)
                dangling.append(ref)
                continue
            if owner["metadata"].get("uid") != owner_uid:
                self.absent.add(owner_uid)
                dangling.append(ref)
                continue
            owner_meta = owner["metadata"]
            if owner_meta.get("deletionTimestamp") and FOREGROUND in (owner_meta.get("finalizers") or []):
                waiting.append(ref)
            else:
                solid.append(ref)
        return solid, dangling, waiting

    async def _process_deleting_dependents(self, node: _Node, latest: Obj) -> None:
        blocking = []
        for dep_uid in node.dependents:
            dep = self.nodes.get(dep_uid)
            if dep is None or dep.virtual:
                continue
            if any(r["uid"] == node.uid and r.get("blockOwnerDeletion") for r in dep.owners):
                blocking.append(dep)
        if not blocking:
            log.info("garbage collector: %s has no blocking dependents left; removing %s", node.describe(),
                     FOREGROUND)
            await self._remove_finalizer(node, latest, FOREGROUND)
            return
        for dep in blocking:
            if not dep.deleting_dependents:
                self.enqueue(f"delete/{dep.uid}")

    async def _attempt_to_orphan(self, owner: _Node) -> None:
        latest = await self._get_live(owner)
        if latest is None:
            return
        meta = latest["metadata"]
        if not meta.get("deletionTimestamp") or ORPHAN not in (meta.get("finalizers") or []):
            return
        for dep_uid in list(owner.dependents):
            dep = self.nodes.get(dep_uid)
            if dep is None or dep.virtual:
                continue
            live = await self._get_live(dep)
            if live is None:
                continue
            refs = live["metadata"].get("ownerReferences") or []
            kept = [r for r in refs if r.get("uid") != owner.uid]
            if len(kept) != len(refs):
                await self._patch_meta(dep, live, {"ownerReferences": kept})
        log.info("garbage collector: orphaned the dependents of %s", owner.describe())
        await self._remove_finalizer(owner, latest, ORPHAN)

    # -- writes ------------------------------------------------------------------------------------------------

    async def _patch_meta(self, node: _Node, latest: Obj, changes: Obj) -> Obj:
        """A merge patch of metadata, conditional on the resourceVersion we decided on (Conflict -> retry)."""
        assert node.resource is not None
        meta = {k: (v if v else None) for k, v in changes.items()}
        meta["resourceVersion"] = latest["metadata"]["resourceVersion"]
        try:
            return await self.client.patch(node.resource, node.name, {"metadata": meta},
                                           node.namespace if node.resource.namespaced else None)
        except NotFound:
            return latest

    async def _remove_finalizer(self, node: _Node, latest: Obj, finalizer: str) -> None:
        finalizers = [f for f in latest["metadata"].get("finalizers") or [] if f != finalizer]
        await self._patch_meta(node, latest, {"finalizers": finalizers})

    async def _delete(self, node: _Node, policy: str) -> None:
        resource = node.resource or self._resource_for(node.api_version, node.kind)
        assert resource is not None
        log.info("garbage collector: deleting %s (propagation %s)", node.describe(), policy)
        try:
            await self.client.delete(resource, node.name, node.namespace if resource.namespaced else None,
                                     propagation_policy=policy, preconditions={"uid": node.uid})
        except NotFound:
            pass
        except Conflict:
            pass  # a new object of the same name: not ours to delete
