"""The `ccmkit` command: `up` runs the whole cluster in one process; other subcommands run one component each.

Every subcommand runs in the foreground, logs to stderr, and exits cleanly on SIGINT or SIGTERM. Bad flags and
unusable stores end with a one-line message and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import signal
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

from controlplane.apiserver import ServerOptions
from controlplane.cluster import Cluster, ClusterConfig, Component, ComponentFactory, default_data_dir


def _run(main: "asyncio.Future[None] | object") -> None:
    from controlplane.gctuning import tune_for_service

    tune_for_service()
    try:
        import uvloop

        uvloop.run(main)  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(main)  # type: ignore[arg-type]


async def _serve(config: ClusterConfig, banner: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    cluster = Cluster(config)
    try:
        await cluster.start()
    except (ValueError, OSError, RuntimeError) as exc:
        await cluster.stop()
        raise click.ClickException(str(exc)) from None
    # What exists now (modules, registry, schemas) lives as long as the process: take it out of the collector's view
    # so the full collections that request churn triggers stop re-scanning it (a 500-item list page spent ~2 ms
    # in GC before, ~0.3 ms after; docs/BENCHMARKS.md). Done here, not in the library: embedders own their GC.
    gc.freeze()
    if banner:
        click.echo(f"ccmkit is up: API server ready in {cluster.ready_in * 1000:.0f} ms, all components in "
                   f"{cluster.started_in * 1000:.0f} ms, at {cluster.url} "
                   f"(store: {config.store})", err=True)
        click.echo(f"  export KUBECONFIG={cluster.kubeconfig}", err=True)
        click.echo("  kubectl get namespaces", err=True)
        click.echo("Press Ctrl-C to stop.", err=True)
    try:
        await stop.wait()
    finally:
        await cluster.stop()
        if banner:
            click.echo("ccmkit stopped.", err=True)


def _store_option(default: str) -> click.Option:
    return click.option("--store", default=default, show_default=True,
                        help="Where cluster state lives: sqlite (durable, under --data-dir), memory, "
                             "etcd (a local etcd under --data-dir) or etcd://HOST:PORT[,HOST:PORT...].")


_data_dir_option = click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                                help="State and kubeconfig directory [default: $CCMKIT_DATA_DIR or ~/.ccmkit].")
_port_option = click.option("--port", type=click.IntRange(0, 65535), default=6443, show_default=True,
                            help="API server port; 0 picks a free one.")
_host_option = click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ccmkit")
def main() -> None:
    """ccmkit: a lightweight Kubernetes control plane beside a fake cloud, for offline end-to-end tests."""


_runtime_option = click.option(
    "--runtime", default="process", show_default=True,
    help="Container runtime of the kubelets: process (real local processes, each pod on its own 127.x address), "
         "simulated (in memory, for thousands of nodes) or remote:SOCKET (CRI gRPC, e.g. containerd).")
_cloud_provider_option = click.option(
    "--cloud-provider", type=click.Choice(["", "external"]), default="", show_default=True,
    help="external: nodes register tainted node.cloudprovider.kubernetes.io/uninitialized and without addresses, "
         "for a cloud-controller-manager to initialise.")


_controllers_option = click.option(
    "--controllers", default="*", show_default=True,
    help="Controllers to run, as kube-controller-manager's flag: '*' for all, 'foo' to enable, '-foo' to disable "
         "(e.g. '*,-nodeipam').")


@main.command()
@_data_dir_option
@_port_option
@_host_option
@_store_option("sqlite")
@_controllers_option
@click.option("--nodes", type=click.IntRange(0), default=1, show_default=True,
              help="How many kubelets (nodes) to run in this process; 0 runs none.")
@_runtime_option
@_cloud_provider_option
@click.option("--scheduler-config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A KubeSchedulerConfiguration (YAML) for the in-process scheduler [default: upstream's defaults].")
def up(data_dir: Path | None, port: int, host: str, store: str, controllers: str, nodes: int, runtime: str,
       cloud_provider: str, scheduler_config: Path | None) -> None:
    """Run the whole cluster in this process and write DATA_DIR/kubeconfig once it is ready."""
    config = ClusterConfig(data_dir=data_dir or default_data_dir(), host=host, port=port, store=store)
    # Flags are checked now, so a mistake is a one-line error before anything starts; the component modules
    # (numpy, the plugins, the controllers: a quarter second) are imported only once the API server answers.
    # Without --scheduler-config the scheduler takes upstream's defaults itself (building them imports the plugins
    # and numpy, so that waits for the deferred import too); a given file is checked now.
    scheduler = _scheduler_config(scheduler_config, "--scheduler-config") if scheduler_config else None
    enabled = _checked_controllers(controllers)
    # The worker thread also imports what each component's start would otherwise import lazily on the event loop
    # (which then stalls for tens of ms at a time): Starlette's anyio backend (the API server's first watch), each
    # enabled controller's module, the kubelet's server and runtime.
    config.components.append(_deferred(
        "controlplane.scheduler.service", lambda m: m.component_factory(scheduler),
        also=("anyio._backends._asyncio",)))
    # One process, one manager: no leader election (nothing to elect against), as k3s runs its controllers.
    config.components.append(_deferred(
        "controlplane.controllers.manager", lambda m: m.component_factory(m.ManagerConfig(controllers=enabled)),
        also=_controller_modules(enabled)))
    if nodes:
        config.components.append(_deferred("controlplane.kubelet.runtimes", lambda m: m.KubeletComponent(
            nodes=nodes, runtime=runtime, cloud_provider=cloud_provider), also=_kubelet_modules(runtime)))
    _run(_serve(config, banner=True))


def _deferred(module: str, make: Callable[[Any], ComponentFactory], also: Iterable[str] = ()) -> ComponentFactory:
    """A component factory whose module is imported in a worker thread when the cluster starts it, so the API
    server, already answering, keeps serving (e.g. /readyz) while the import runs. ``also`` are modules the
    component imports lazily once started, imported in that thread too (best effort: a failure there is left for
    the component to meet, and report, itself)."""

    def load() -> Any:
        loaded = importlib.import_module(module)
        for name in also:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - only a warm-up
                pass
        return loaded

    async def factory(api_url: str, data_dir: Path) -> Component:
        loaded = await asyncio.to_thread(load)
        return await make(loaded)(api_url, data_dir)

    return factory


def _controller_modules(spec: str) -> list[str]:
    from controlplane.controllers import CONTROLLERS, select

    return list(dict.fromkeys(CONTROLLERS[name].partition(":")[0] for name in select(spec)))


def _kubelet_modules(runtime: str) -> list[str]:
    runtime_module = {"simulated": "simulated", "process": "process"}.get(runtime, "remote")
    return ["controlplane.kubelet.server", "uvicorn.protocols.websockets.auto",
            f"controlplane.kubelet.cri.{runtime_module}"]


@main.command()
@_data_dir_option
@_port_option
@_host_option
@_store_option("sqlite")
@click.option("--bookmark-interval", type=float, default=ServerOptions.bookmark_interval, show_default=True,
              help="Seconds between watch bookmarks.")
def apiserver(data_dir: Path | None, port: int, host: str, store: str, bookmark_interval: float) -> None:
    """Run the API server alone; writes DATA_DIR/kubeconfig once it is ready."""
    config = ClusterConfig(data_dir=data_dir or default_data_dir(), host=host, port=port, store=store,
                           options=ServerOptions(bookmark_interval=bookmark_interval))
    _run(_serve(config, banner=True))


@main.group()
def cri() -> None:
    """Container Runtime Interface tools."""


@cri.command("serve")
@click.option("--runtime", type=click.Choice(["simulated", "process"]), default="simulated", show_default=True,
              help="Which runtime to serve over the CRI v1 gRPC API.")
@click.option("--socket", "socket_path", required=True, help="Unix socket path to listen on.")
@_data_dir_option
def cri_serve(runtime: str, socket_path: str, data_dir: Path | None) -> None:
    """Serve a ccmkit runtime over the real CRI gRPC API, for any CRI client (a kubelet, crictl)."""
    from controlplane.kubelet.cri import server

    _run(server.main(runtime, socket_path, data_dir or default_data_dir() / "cri"))


def _pairs(text: str, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=what)
        out[key] = value
    return out


def _taints(text: str) -> list[dict[str, str]]:
    taints = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        key_value, sep, effect = item.rpartition(":")
        if not sep or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise click.BadParameter(f"{item!r} is not KEY[=VALUE]:EFFECT", param_hint="--register-with-taints")
        key, _, value = key_value.partition("=")
        taints.append({"key": key, **({"value": value} if value else {}), "effect": effect})
    return taints


@main.command()
@click.option("--name", required=True, help="The node name.")
@click.option("--server", required=True, help="The API server URL, e.g. http://127.0.0.1:6443.")
@_runtime_option
@_data_dir_option
@click.option("--node-ip", default="127.0.0.1", show_default=True,
              help="The node's InternalIP; its kubelet server listens there unless --address says otherwise.")
@click.option("--address", default=None, help="Address of the kubelet's server (logs, exec) [default: --node-ip].")
@click.option("--kubelet-port", type=click.IntRange(0, 65535), default=10250, show_default=True,
              help="Port of the kubelet's server; 0 picks a free one.")
@click.option("--pod-cidr", default=None, help="Pod IPs of the process/simulated runtime (distinct per node).")
@_cloud_provider_option
@click.option("--hostname-override", default=None, help="A provider-given hostname (kubernetes.io/hostname).")
@click.option("--node-labels", default="", help="KEY=VALUE,... added to the node's labels.")
@click.option("--register-with-taints", default="", help="KEY[=VALUE]:EFFECT,... the node registers with.")
def kubelet(name: str, server: str, runtime: str, data_dir: Path | None, node_ip: str, address: str | None,
            kubelet_port: int, pod_cidr: str | None, cloud_provider: str, hostname_override: str | None,
            node_labels: str, register_with_taints: str) -> None:
    """Run one node's kubelet against an API server, until SIGINT or SIGTERM."""
    from controlplane.kubelet.config import KubeletOptions, NodeConfig
    from controlplane.kubelet.pool import KubeletPool, NodeRuntime
    from controlplane.kubelet.runtimes import build_runtime

    base = (data_dir or default_data_dir()) / "kubelet" / name
    config = NodeConfig(name, labels=_pairs(node_labels, "--node-labels"), taints=_taints(register_with_taints),
                        node_ip=node_ip, hostname=hostname_override, cloud_provider=cloud_provider)
    try:
        rt, images = build_runtime(runtime, base, cidr=pod_cidr)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--runtime") from None
    options = KubeletOptions(data_dir=base / "state", server_host=address or node_ip, server_port=kubelet_port)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        pool = KubeletPool(server, [NodeRuntime(config, rt, images)], options, own_runtimes=True)
        try:
            await pool.start()
        except (OSError, ValueError, RuntimeError) as exc:
            await pool.stop()
            raise click.ClickException(f"kubelet could not start: {exc}") from None
        click.echo(f"kubelet {name} is up: runtime {runtime}, server on {options.server_host}:{pool.server_port}",
                   err=True)
        try:
            await stop.wait()
        finally:
            await pool.stop()

    _run(main())


def _checked_controllers(spec: str) -> str:
    from controlplane.controllers import select

    try:
        select(spec)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--controllers") from None
    return spec


class Duration(click.ParamType):
    """Go-style durations as kube-controller-manager takes them ("40s", "1m30s", "500ms"); a bare number is
    seconds."""

    name = "duration"
    _UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip()
        try:
            return float(text)
        except ValueError:
            pass
        import re

        parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
        if not parts or "".join(n + u for n, u in parts) != text:
            self.fail(f"{value!r} is not a duration like 40s, 1m30s or 500ms", param, ctx)
        return sum(float(n) * self._UNITS[u] for n, u in parts)


DURATION = Duration()


def _option_value(text: str) -> object:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    try:
        return DURATION.convert(text, None, None)
    except click.BadParameter:
        return {"true": True, "false": False}.get(text.lower(), text)


@main.command("controller-manager")
@click.option("--server", default=None, help="The API server URL, e.g. http://127.0.0.1:6443.")
@click.option("--kubeconfig", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A kubeconfig to reach the API server with (instead of --server).")
@_controllers_option
@click.option("--leader-elect/--no-leader-elect", default=True, show_default=True,
              help="Run the controllers only while holding the kube-system/kube-controller-manager Lease.")
@click.option("--leader-elect-lease-duration", type=DURATION, default="15s", show_default=True)
@click.option("--leader-elect-renew-deadline", type=DURATION, default="10s", show_default=True)
@click.option("--leader-elect-retry-period", type=DURATION, default="2s", show_default=True)
@click.option("--leader-elect-resource-name", default="kube-controller-manager", show_default=True)
@click.option("--leader-elect-resource-namespace", default="kube-system", show_default=True)
@click.option("--cluster-cidr", default="10.244.0.0/16", show_default=True,
              help="CIDR range for pods (comma-separated for dual-stack); nodes get ranges from it.")
@click.option("--node-cidr-mask-size", type=click.IntRange(0, 128), default=0,
              help="Mask size of each node's range [default: 24 for IPv4, 64 for IPv6].")
@click.option("--allocate-node-cidrs/--no-allocate-node-cidrs", default=True, show_default=True)
@click.option("--node-monitor-period", type=DURATION, default="5s", show_default=True)
@click.option("--node-monitor-grace-period", type=DURATION, default="40s", show_default=True,
              help="How long a node's kubelet may stay silent before the node is marked Unknown.")
@click.option("--node-startup-grace-period", type=DURATION, default="60s", show_default=True)
@click.option("--terminated-pod-gc-threshold", type=click.IntRange(0), default=12500, show_default=True,
              help="How many terminated pods may exist before the pod garbage collector deletes the oldest (0: no "
                   "limit).")
@click.option("--option", "extra", multiple=True, metavar="KEY=VALUE",
              help="Any other controller setting by its Python name (e.g. concurrent_gc_syncs=8); repeatable.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve /metrics and /healthz on this port (0 picks one) [default: not served].")
@click.option("--bind-address", default="127.0.0.1", show_default=True, help="Address for --metrics-port.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def controller_manager(server: str | None, kubeconfig: Path | None, controllers: str, leader_elect: bool,
                       leader_elect_lease_duration: float, leader_elect_renew_deadline: float,
                       leader_elect_retry_period: float, leader_elect_resource_name: str,
                       leader_elect_resource_namespace: str, cluster_cidr: str, node_cidr_mask_size: int,
                       allocate_node_cidrs: bool, node_monitor_period: float, node_monitor_grace_period: float,
                       node_startup_grace_period: float, terminated_pod_gc_threshold: int, extra: tuple[str, ...],
                       metrics_port: int | None,
                       bind_address: str, log_level: str) -> None:
    """Run the controller manager (namespace, garbage collector, endpoints, nodes, volumes, quotas, workloads)
    against an API server, until SIGINT or SIGTERM."""
    import logging

    from controlplane.client import ClientConfig, KubeconfigError, from_url, load_kubeconfig
    from controlplane.controllers.leader_election import LeaderElectionConfig
    from controlplane.controllers.manager import ControllerManager, ManagerConfig

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if (server is None) == (kubeconfig is None):
        raise click.UsageError("give exactly one of --server and --kubeconfig")
    client_config: ClientConfig
    if server is not None:
        client_config = from_url(server)
    else:
        try:
            client_config = load_kubeconfig(kubeconfig)
        except (KubeconfigError, OSError) as exc:
            raise click.BadParameter(str(exc), param_hint="--kubeconfig") from None
    options: dict[str, object] = {
        "cluster_cidr": cluster_cidr, "node_cidr_mask_size": node_cidr_mask_size or None,
        "allocate_node_cidrs": allocate_node_cidrs, "node_monitor_period": node_monitor_period,
        "node_monitor_grace_period": node_monitor_grace_period,
        "node_startup_grace_period": node_startup_grace_period,
        "terminated_pod_gc_threshold": terminated_pod_gc_threshold,
    }
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--option")
        options[key.replace("-", "_")] = _option_value(value)
    election = None
    if leader_elect:
        try:
            election = LeaderElectionConfig(
                name=leader_elect_resource_name, namespace=leader_elect_resource_namespace,
                lease_duration=leader_elect_lease_duration, renew_deadline=leader_elect_renew_deadline,
                retry_period=leader_elect_retry_period)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--leader-elect-*") from None
    config = ManagerConfig(controllers=_checked_controllers(controllers), options=options,
                           leader_election=election, metrics_host=bind_address, metrics_port=metrics_port)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        manager = ControllerManager(client_config, config)
        try:
            await manager.start()
        except (OSError, ValueError, RuntimeError) as exc:
            await manager.stop()
            raise click.ClickException(f"controller manager could not start: {exc}") from None
        where = f"; metrics and health at {manager.metrics_url}" if manager.metrics_url else ""
        who = f" as {election.identity} (leader election on)" if election else ""
        click.echo(f"controller manager running{who} against {client_config.server}{where}", err=True)
        try:
            await stop.wait()
        finally:
            await manager.stop()

    _run(run())



def _scheduler_config(path: Path | None, hint: str):  # type: ignore[no-untyped-def]  # -> SchedulerConfiguration
    from controlplane.scheduler.config import ConfigError, default_configuration, load_config

    if path is None:
        return default_configuration()
    try:
        return load_config(path)
    except (ConfigError, OSError) as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from None


@main.command()
@click.option("--server", default=None, help="The API server URL; overrides the kubeconfig's server.")
@click.option("--kubeconfig", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A kubeconfig to reach the API server with [default: $KUBECONFIG or ~/.kube/config when "
                   "--server is not given].")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A KubeSchedulerConfiguration (kubescheduler.config.k8s.io/v1) YAML file: profiles, plugins, "
                   "pluginConfig, extenders.")
@click.option("--leader-elect/--no-leader-elect", default=False, show_default=True,
              help="Schedule only while holding the Lease named below (for several replicas).")
@click.option("--leader-elect-resource-name", default="kube-scheduler", show_default=True)
@click.option("--leader-elect-resource-namespace", default="kube-system", show_default=True)
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve /metrics and /healthz on this port (0 picks one) [default: not served].")
@click.option("--bind-address", default="127.0.0.1", show_default=True, help="Address for --metrics-port.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def scheduler(server: str | None, kubeconfig: Path | None, config_file: Path | None, leader_elect: bool,
              leader_elect_resource_name: str, leader_elect_resource_namespace: str, metrics_port: int | None,
              bind_address: str, log_level: str) -> None:
    """Run the scheduler against an API server (ccmkit's or a real cluster's), until SIGINT or SIGTERM."""
    import dataclasses
    import logging

    from controlplane.client import ClientConfig, KubeconfigError, from_url, load_kubeconfig
    from controlplane.scheduler.service import SchedulerOptions, SchedulerService

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    sched_config = _scheduler_config(config_file, "--config")
    client_config: ClientConfig
    if kubeconfig is None and server is not None:
        client_config = from_url(server)
    else:
        try:
            client_config = load_kubeconfig(kubeconfig)
        except (KubeconfigError, OSError) as exc:
            raise click.BadParameter(str(exc), param_hint="--kubeconfig") from None
        if server is not None:
            client_config = dataclasses.replace(client_config, server=server.rstrip("/"))
    election = None
    if leader_elect:
        from controlplane.controllers.leader_election import LeaderElectionConfig

        election = LeaderElectionConfig(name=leader_elect_resource_name, namespace=leader_elect_resource_namespace)
    options = SchedulerOptions(metrics_host=bind_address, metrics_port=metrics_port, leader_election=election)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        svc = SchedulerService(client_config, sched_config, options)
        try:
            await svc.start()
        except (OSError, ValueError, RuntimeError) as exc:
            await svc.stop()
            raise click.ClickException(f"scheduler could not start: {exc}") from None
        where = f"; metrics and health at {svc.metrics_url}" if svc.metrics_url else ""
        who = f" as {election.identity} (leader election on)" if election else ""
        click.echo(f"scheduler running{who} against {client_config.server}, profiles: "
                   f"{', '.join(svc.profiles)}{where}", err=True)
        try:
            await stop.wait()
        finally:
            await svc.stop()

    _run(run())

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
