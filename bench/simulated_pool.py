"""The simulated-node KubeletPool process the end-to-end benchmarks run beside the API server: it registers its
nodes, prints ``ready <seconds>`` on stdout, and runs until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from pathlib import Path


def add_pool_arguments(parser: argparse.ArgumentParser) -> None:
    """The hidden flags with which a benchmark starts its own script again as the pool's process."""
    parser.add_argument("--serve-pool", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)


def run_pool(url: str, nodes: int, workers: int, data_dir: Path) -> None:
    """Run ``serve_pool`` on the event loop the ``ccmkit`` commands use (uvloop when it is installed)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve_pool(url, nodes, workers, data_dir))
    else:
        uvloop.run(serve_pool(url, nodes, workers, data_dir))


async def serve_pool(url: str, nodes: int, workers: int, data_dir: Path) -> None:
    from controlplane.gctuning import tune_for_service
    from controlplane.kubelet.config import KubeletOptions, NodeConfig
    from controlplane.kubelet.pool import KubeletPool
    from controlplane.kubelet.runtimes import node_runtime

    tune_for_service()  # as `ccmkit kubelet` and `ccmkit up` do
    options = KubeletOptions(data_dir=data_dir / "kubelet", sync_workers=workers, max_images_in_status=0)
    pool = KubeletPool(url, [node_runtime("simulated", NodeConfig(f"node-{i}"), data_dir, i) for i in range(nodes)],
                       options, own_runtimes=True)
    began = time.perf_counter()
    await pool.start()
    print(f"ready {time.perf_counter() - began:.2f}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await pool.stop()
