"""The ServiceAccount controller through a real API server: every active namespace has a `default` account."""

from __future__ import annotations

from controlplane.client import NAMESPACES, SERVICEACCOUNTS


async def test_default_service_account_in_every_namespace(client, kube, start_manager, wait_for):
    await start_manager("serviceaccount")
    for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
        await wait_for(lambda ns=ns: client.get(SERVICEACCOUNTS, "default", ns), message=f"default SA in {ns}")

    await client.create(NAMESPACES, {"metadata": {"name": "apps"}})
    first = await wait_for(lambda: client.get(SERVICEACCOUNTS, "default", "apps"))

    await client.delete(SERVICEACCOUNTS, "default", "apps")

    async def recreated():
        sa = await client.get(SERVICEACCOUNTS, "default", "apps")
        return sa if sa["metadata"]["uid"] != first["metadata"]["uid"] else None

    await wait_for(recreated, message="a deleted default account comes back")


async def test_no_account_in_a_terminating_namespace(client, kube, start_manager, wait_for):
    # The namespace's "kubernetes" finalizer keeps it Terminating (no namespace controller runs here).
    await client.create(NAMESPACES, {"metadata": {"name": "leaving"}})
    await client.delete(NAMESPACES, "leaving")
    await client.create(NAMESPACES, {"metadata": {"name": "staying"}})
    await start_manager("serviceaccount")
    await wait_for(lambda: client.get(SERVICEACCOUNTS, "default", "staying"))
    # Both namespaces were queued at start and the manager runs one worker: "leaving" has been handled by now.
    assert await kube.gone(SERVICEACCOUNTS, "default", "leaving")
