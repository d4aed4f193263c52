"""The `ccmkit` command: `up` runs the whole cluster in one process; other subcommands run one component each.

Every subcommand runs in the foreground, logs to stderr, and exits cleanly on SIGINT or SIGTERM. Bad flags and
unusable stores end with a one-line message and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import click

from controlplane.apiserver import ServerOptions
from controlplane.cluster import Cluster, ClusterConfig, default_data_dir


def _run(main: "asyncio.Future[None] | object") -> None:
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
    if banner:
        click.echo(f"ccmkit is up in {cluster.started_in * 1000:.0f} ms: API server at {cluster.url} "
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


@main.command()
@_data_dir_option
@_port_option
@_host_option
@_store_option("sqlite")
def up(data_dir: Path | None, port: int, host: str, store: str) -> None:
    """Run the whole cluster in this process and write DATA_DIR/kubeconfig once it is ready."""
    config = ClusterConfig(data_dir=data_dir or default_data_dir(), host=host, port=port, store=store)
    _run(_serve(config, banner=True))


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
