"""A private containerd for tests: its own config, state and socket in a temp dir, and locally built images.

The remote runtime is only proven against a real containerd, and this machine has no registry, so tests need a
containerd they can start and throw away in about a second with a pause image and a busybox image built here.
``Containerd`` follows the recipe in DESIGN.md: ``restrict_oom_score_adj`` (negative oom_score_adj is forbidden
here), the local pause image as ``sandbox_image``, a bridge + host-local CNI network, images imported with
``ctr -n k8s.io images import``; stopping removes every sandbox, then ends containerd and any shim by PID.

Images: ``build_images(cache_dir)`` writes ``pause.tar`` (a static C program waiting in pause()) and
``busybox.tar`` (Debian's busybox-static with its applet links) as OCI layout tars, built with gcc and umoci.
Command line: ``python -m controlplane.kubelet.cri.containerd_testing build-images [DIR]`` or ``run [DIR]``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

PAUSE_IMAGE = "ccmkit.local/pause:latest"
BUSYBOX_IMAGE = "ccmkit.local/busybox:latest"
# Not imported at start: a third image with an id of its own, for tests that remove an image. (Importing a tar
# again under another name gives the same image id, and removing that id removes every name it has.)
EXTRA_IMAGE = "ccmkit.local/extra:latest"
K8S_NAMESPACE = "k8s.io"  # the containerd namespace the CRI plugin uses
TOOLS = ("containerd", "ctr", "runc", "umoci", "gcc")
BUSYBOX_BINARY = Path("/bin/busybox")
CNI_BIN_DIR = Path("/usr/lib/cni")

PAUSE_C = r"""
/* The sandbox process of a pod: it holds the pod's namespaces and does nothing else. It exits on SIGTERM or
 * SIGINT so a sandbox stops at once; it reaps nothing because containerd's shim does that. */
#include <signal.h>
#include <unistd.h>

static void on_signal(int sig) { (void)sig; _exit(0); }

int main(void) {
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    for (;;) pause();
    return 0;
}
"""


class ContainerdUnavailable(RuntimeError):
    """containerd or a tool it needs is missing, or it would not start here."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("CCMKIT_CRI_IMAGES") or Path.home() / ".cache" / "ccmkit" / "cri-images")


def missing_tools() -> list[str]:
    """What is missing on this machine to run containerd tests (empty when all is there)."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if not BUSYBOX_BINARY.exists():
        missing.append(f"{BUSYBOX_BINARY} (busybox-static)")
    if not (CNI_BIN_DIR / "bridge").exists():
        missing.append(f"{CNI_BIN_DIR}/bridge (containernetworking-plugins)")
    if os.geteuid() != 0:
        missing.append("root")
    return missing


def _run(*argv: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def _build_image(out: Path, fill_rootfs: object, *config_args: str) -> None:
    """umoci: a new empty image, its rootfs filled by ``fill_rootfs(path)``, repacked, configured, tarred."""
    with tempfile.TemporaryDirectory(prefix="ccmkit-image-") as tmp:
        layout, bundle = Path(tmp) / "oci", Path(tmp) / "bundle"
        _run("umoci", "init", "--layout", layout)
        _run("umoci", "new", "--image", f"{layout}:latest")
        _run("umoci", "unpack", "--rootless", "--image", f"{layout}:latest", bundle)
        fill_rootfs(bundle / "rootfs")  # type: ignore[operator]
        _run("umoci", "repack", "--image", f"{layout}:latest", bundle)
        _run("umoci", "config", "--image", f"{layout}:latest", *config_args)
        _run("umoci", "gc", "--layout", layout)
        partial = out.with_suffix(".tar.tmp")
        _run("tar", "-C", layout, "-cf", partial, ".")
        partial.rename(out)  # atomic: a half-written tar is never taken for a built image


def _fill_pause(rootfs: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "pause.c"
        src.write_text(PAUSE_C)
        _run("gcc", "-static", "-O2", "-s", "-o", rootfs / "pause", src)


def _fill_busybox(rootfs: Path) -> None:
    for d in ("bin", "etc", "root", "tmp"):
        (rootfs / d).mkdir(exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX_BINARY, rootfs / "bin" / "busybox")
    # One symlink per applet, as `busybox --install` would make, without running anything inside the rootfs.
    for applet in _run(BUSYBOX_BINARY, "--list").split():
        if applet != "busybox":
            (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\n")


def build_images(cache_dir: Path | None = None) -> dict[str, Path]:
    """Build the pause and busybox OCI tars into ``cache_dir`` unless they are there; image name -> tar."""
    cache = Path(cache_dir or default_cache_dir())
    cache.mkdir(parents=True, exist_ok=True)
    pause, busybox, extra = cache / "pause.tar", cache / "busybox.tar", cache / "extra.tar"
    if not pause.exists():
        _build_image(pause, _fill_pause, "--config.entrypoint", "/pause")
    if not busybox.exists():
        _build_image(busybox, _fill_busybox, "--config.cmd", "/bin/sh", "--config.env", "PATH=/bin")
    if not extra.exists():
        _build_image(extra, _fill_pause, "--config.entrypoint", "/pause", "--config.label", "ccmkit.io/image=extra")
    return {PAUSE_IMAGE: pause, BUSYBOX_IMAGE: busybox, EXTRA_IMAGE: extra}


def _wait_for(condition: object, timeout: float, what: str) -> None:
    """Poll ``condition()`` until true; containerd offers no readiness signal to wait on instead."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():  # type: ignore[operator]
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class Containerd:
    """One containerd with its CRI plugin, rooted in a fresh temp dir. Use as a context manager, or call
    ``start()`` and ``stop()``. ``endpoint`` is its CRI address; ``images`` the imported image names."""

    def __init__(
        self,
        images_dir: Path | None = None,
        subnet: str = "10.244.0.0/24",
        base_dir: Path | None = None,
    ) -> None:
        self.images_dir = images_dir
        self.subnet = subnet
        self.base_dir = Path(base_dir) if base_dir else None
        self.bridge = f"ccmk{secrets.token_hex(3)}"  # unique per instance; at most 15 characters
        self.process: subprocess.Popen[bytes] | None = None
        self.images: dict[str, Path] = {}

    @property
    def socket(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / "containerd.sock"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def __enter__(self) -> Containerd:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _config(self) -> str:
        base = self.base_dir
        assert base is not None
        # Only what differs from `containerd config default`; containerd fills in the rest.
        return f"""version = 2
root = "{base}/root"
state = "{base}/state"

[grpc]
  address = "{self.socket}"

[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  sandbox_image = "{PAUSE_IMAGE}"
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{base}/cni"
"""

    def _cni_conf(self) -> str:
        assert self.base_dir is not None
        return json.dumps(
            {
                "cniVersion": "0.4.0",
                "name": "ccmkit",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": self.bridge,
                        "isGateway": True,
                        "ipMasq": False,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": self.subnet}]],
                            "dataDir": str(self.base_dir / "ipam"),
                        },
                    },
                    {"type": "portmap", "capabilities": {"portMappings": True}},
                ],
            },
            indent=2,
        )

    def start(self, timeout: float = 30.0) -> None:
        if missing := missing_tools():
            raise ContainerdUnavailable("missing: " + ", ".join(missing))
        self.images = build_images(self.images_dir)
        if self.base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="ccmkit-ctd-"))
        (self.base_dir / "cni").mkdir(parents=True, exist_ok=True)
        (self.base_dir / "config.toml").write_text(self._config())
        (self.base_dir / "cni" / "10-ccmkit.conflist").write_text(self._cni_conf())
        log = open(self.base_dir / "containerd.log", "wb")  # noqa: SIM115 - containerd writes it while it runs
        self.process = subprocess.Popen(
            ["containerd", "--config", str(self.base_dir / "config.toml")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        try:
            _wait_for(lambda: self.socket.exists() or self.process.poll() is not None, timeout, "containerd's socket")
            if self.process.poll() is not None:
                raise ContainerdUnavailable(f"containerd exited at start:\n{self.log_tail()}")
            _wait_for(self._cri_ready, timeout, "the CRI plugin to report RuntimeReady and NetworkReady")
            for name in (PAUSE_IMAGE, BUSYBOX_IMAGE):
                self.import_image(name)
        except BaseException:
            self.stop()
            raise

    def import_image(self, name: str, tar: Path | None = None) -> None:
        """Import an OCI tar (by default the one built for ``name``) as ``name``; the tag comes from the tar."""
        self.ctr("images", "import", "--base-name", name.rsplit(":", 1)[0], str(tar or self.images[name]))

    def ctr(self, *args: str) -> str:
        return _run("ctr", "--address", str(self.socket), "-n", K8S_NAMESPACE, *args)

    def log_tail(self, lines: int = 30) -> str:
        assert self.base_dir is not None
        with contextlib.suppress(OSError):
            return "\n".join((self.base_dir / "containerd.log").read_text(errors="replace").splitlines()[-lines:])
        return ""

    def _stub(self) -> tuple[object, object]:
        import grpc
        from cri_api.v1 import api_pb2_grpc

        channel = grpc.insecure_channel(f"unix:{self.socket}")
        return channel, api_pb2_grpc.RuntimeServiceStub(channel)  # type: ignore[no-untyped-call]

    def _cri_ready(self) -> bool:
        import grpc
        from cri_api.v1 import api_pb2 as pb

        channel, stub = self._stub()
        try:
            status = stub.Status(pb.StatusRequest(), timeout=2)  # type: ignore[attr-defined]
            return all(c.status for c in status.status.conditions) and len(status.status.conditions) >= 2
        except grpc.RpcError:
            return False
        finally:
            channel.close()  # type: ignore[attr-defined]

    def _remove_all_sandboxes(self) -> None:
        """Remove every sandbox over CRI, so the shims and their mounts go away the normal way."""
        import grpc
        from cri_api.v1 import api_pb2 as pb

        channel, stub = self._stub()
        try:
            for s in stub.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items:  # type: ignore[attr-defined]
                with contextlib.suppress(grpc.RpcError):
                    stub.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=s.id), timeout=30)  # type: ignore[attr-defined]
                    stub.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=s.id), timeout=30)  # type: ignore[attr-defined]
        except grpc.RpcError:
            pass
        finally:
            channel.close()  # type: ignore[attr-defined]

    def _our_shims(self) -> Iterator[int]:
        """PIDs of containerd shims serving our socket (they outlive containerd by design)."""
        needle = str(self.socket).encode()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
                if argv and argv[0].endswith(b"containerd-shim-runc-v2") and needle in argv:
                    yield int(entry.name)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None and self.socket.exists():
            self._remove_all_sandboxes()
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
        if self.base_dir is None:
            return
        for pid in list(self._our_shims()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # Whatever is still mounted under our dir (rootfs overlays, shm, netns) must go before the dir can.
        prefix = str(self.base_dir) + "/"
        with open("/proc/self/mounts") as f:
            mounts = [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
        for target in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)
        if shutil.which("ip") and Path(f"/sys/class/net/{self.bridge}").exists():
            subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True, check=False)
        shutil.rmtree(self.base_dir, ignore_errors=True)
        self.base_dir = None


def _cli(argv: list[str]) -> int:
    if len(argv) >= 1 and argv[0] == "build-images":
        for name, tar in build_images(Path(argv[1]) if len(argv) > 1 else None).items():
            print(f"{name}\t{tar}")
        return 0
    if len(argv) >= 1 and argv[0] == "run":
        with Containerd(images_dir=Path(argv[1]) if len(argv) > 1 else None) as ctd:
            print(f"containerd CRI endpoint: {ctd.endpoint} (pid {ctd.process.pid if ctd.process else '?'})")
            print("images: " + ", ".join(ctd.images) + "\nCtrl-C to stop", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
        return 0
    print("usage: python -m controlplane.kubelet.cri.containerd_testing build-images [DIR] | run [DIR]")
    return 2


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
