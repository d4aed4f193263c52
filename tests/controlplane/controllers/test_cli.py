"""`ccmkit controller-manager` and `ccmkit up` as a user runs them: real processes against a real API server."""

from __future__ import annotations

from pathlib import Path

import yaml
from cli_process import ccmkit, stop
from click.testing import CliRunner

from controlplane.cli import main
from controlplane.client import LEASES, NAMESPACES, SERVICEACCOUNTS, ApiClient


async def test_controller_manager_subcommand_leads_acts_and_releases(apiserver, client, wait_for):
    proc = ccmkit("controller-manager", "--server", apiserver.url, "--controllers", "serviceaccount,namespace",
                  "--leader-elect-lease-duration", "4s", "--leader-elect-renew-deadline", "3s",
                  "--leader-elect-retry-period", "500ms", "--option", "concurrent_namespace_syncs=1")
    try:
        async def holder() -> str | None:
            lease = await client.get(LEASES, "kube-controller-manager", "kube-system")
            return lease["spec"].get("holderIdentity")

        identity = await wait_for(holder, timeout=30)
        await client.create(NAMESPACES, {"metadata": {"name": "cli-made"}})
        await wait_for(lambda: client.get(SERVICEACCOUNTS, "default", "cli-made"), timeout=30)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert f"as {identity} (leader election on)" in err
    assert not await holder(), "SIGTERM is a clean stop: the lease is released"


def test_bad_flags_fail_with_a_message(apiserver):
    for flags, message in ((("--controllers", "*,-nosuch"), "not in the list of known controllers"),
                           (("--leader-elect-lease-duration", "soon"), "is not a duration"),
                           (("--leader-elect-renew-deadline", "20s"), "leaseDuration must be greater")):
        result = CliRunner().invoke(main, ["controller-manager", "--server", apiserver.url, *flags])
        assert result.exit_code == 2, result.output
        assert message in result.output
        assert isinstance(result.exception, SystemExit), "a usage error, not a crash"


async def test_up_runs_the_controller_manager(tmp_path: Path, wait_for):
    proc = ccmkit("up", "--port", "0", "--store", "memory", "--nodes", "0", "--data-dir", str(tmp_path))
    try:
        kubeconfig = tmp_path / "kubeconfig"
        await wait_for(kubeconfig.exists, timeout=60)
        server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
        async with ApiClient(server) as client:
            await client.create(NAMESPACES, {"metadata": {"name": "from-up"}})
            await wait_for(lambda: client.get(SERVICEACCOUNTS, "default", "from-up"), timeout=30)
            await client.delete(NAMESPACES, "from-up")

            async def namespace_gone() -> bool:
                names = {n["metadata"]["name"] for n in (await client.list(NAMESPACES))["items"]}
                return "from-up" not in names

            await wait_for(namespace_gone, timeout=30)
    finally:
        code, err = stop(proc)
    assert code == 0, err
