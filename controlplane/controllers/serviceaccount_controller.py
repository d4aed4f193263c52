"""The ServiceAccount controller: every active namespace has a ``default`` ServiceAccount, recreated if deleted.

Pods name ``default`` as their service account unless told otherwise, so a namespace without one cannot run pods
once admission checks service accounts. Upstream's controller ensures a configurable list of accounts; the list is
the ``service_accounts`` option here (default just ``default``).
"""

from __future__ import annotations

import logging
from typing import Any

from controlplane.client import AlreadyExists, ApiClient, Forbidden, NotFound, SharedInformerFactory
from controlplane.client.resources import NAMESPACES, SERVICEACCOUNTS
from controlplane.controllers.base import DONE, ControllerContext, Enqueue, Result

log = logging.getLogger(__name__)


class ServiceAccountController:
    name = "serviceaccount"

    def __init__(self, ctx: ControllerContext | None = None) -> None:
        ctx = ctx or ControllerContext()
        self.accounts: tuple[str, ...] = tuple(ctx.option("service_accounts", ("default",)))
        self.workers = int(ctx.option("concurrent_serviceaccount_syncs", 1))

    def setup(self, client: ApiClient, informers: SharedInformerFactory, enqueue: Enqueue) -> None:
        self.client = client
        self.namespaces = informers.informer(NAMESPACES)
        self.service_accounts = informers.informer(SERVICEACCOUNTS)

        def namespace_changed(ns: dict[str, Any], *rest: dict[str, Any]) -> None:
            enqueue((rest[-1] if rest else ns)["metadata"]["name"])

        def account_deleted(sa: dict[str, Any]) -> None:
            if sa["metadata"]["name"] in self.accounts:
                enqueue(sa["metadata"]["namespace"])

        self.namespaces.add_handler(on_add=namespace_changed, on_update=namespace_changed)
        self.service_accounts.add_handler(on_delete=account_deleted)

    async def reconcile(self, key: str) -> Result:
        ns = self.namespaces.get(key)
        if ns is None or (ns.get("status") or {}).get("phase") != "Active" or ns["metadata"].get("deletionTimestamp"):
            return DONE
        for name in self.accounts:
            if self.service_accounts.get(f"{key}/{name}") is not None:
                continue
            body = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": key}}
            try:
                await self.client.create(SERVICEACCOUNTS, body, key)
                log.info("created service account %s/%s", key, name)
            except AlreadyExists:
                pass  # the cache was behind; the account exists
            except (Forbidden, NotFound):
                return DONE  # the namespace is terminating or gone: nothing to ensure
        return DONE
