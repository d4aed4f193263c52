"""One node's kubelet: its Node, its pods' lifecycle on a CRI runtime, and the pod status it reports.

The sync is level-based like upstream's syncPod: given the latest pod from the API and what the runtime says, do
the next steps (admit, sandbox, volumes, init containers in order, containers, restarts with CrashLoopBackOff,
liveness kills, graceful termination with preStop hooks) and write the status that results. Everything shared
between nodes (API client, pod informer, work queue, lease and status loops, HTTP server) belongs to the
KubeletPool (pool.py), so a thousand of these cost a thousand small objects, not a thousand watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controlplane.client import (
    NODES,
    PODS,
    AlreadyExists,
    ApiError,
    Conflict,
    Invalid,
    NotFound,
)
from controlplane.scheduler.podinfo import pod_requests
from controlplane.scheduler.quantity import to_int

from . import nodestatus
from .backoff import Backoff, go_duration
from .config import NodeConfig
from .cri.api import (
    ContainerConfig,
    ContainerMetadata,
    ContainerState,
    ContainerStats,
    ContainerStatus,
    CRIError,
    ImageService,
    ImageSpec,
    KeyValue,
    LinuxContainerConfig,
    LinuxContainerResources,
    LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext,
    NamespaceMode,
    NamespaceOption,
    NotFoundError,
    PodSandboxConfig,
    PodSandboxMetadata,
    PodSandboxState,
    PortMapping,
    RuntimeService,
)
from .envvars import ContainerConfigError, container_env, expand_command
from .podstatus import KUBELET_CONDITIONS, ContainerView, pod_status, rejected_status
from .probes import READINESS, STARTUP, ProbeManager
from .volumes import VolumeError, VolumeManager

if TYPE_CHECKING:
    from .pool import KubeletPool

log = logging.getLogger(__name__)

POD_NAME_LABEL = "io.kubernetes.pod.name"
POD_NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
POD_UID_LABEL = "io.kubernetes.pod.uid"
CONTAINER_NAME_LABEL = "io.kubernetes.container.name"


class PodRecord:
    """What the kubelet remembers about one pod between syncs."""

    def __init__(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.namespace: str = meta.get("namespace", "default")
        self.name: str = meta["name"]
        self.pod = pod
        self.deleted = False  # gone from the API server
        self.sandbox_id: str | None = None
        self.sandbox_attempt = -1
        self.sandbox_config: PodSandboxConfig | None = None
        self.sandbox_error = ""
        self.pod_ip = ""
        self.attempts: dict[str, list[str]] = {}  # container name -> container ids, oldest first (at most 2)
        self.statuses: dict[str, ContainerStatus] = {}  # container id -> last known status
        self.next_attempt: dict[str, int] = {}
        self.waiting: dict[str, tuple[str, str]] = {}
        self.retry_at: dict[str, float] = {}  # container name -> when a failed create may be tried again
        self.admitted: bool | None = None
        self.requests: dict[str, int] = {}
        self.counted = False  # its requests are in the node's used resources
        self.start_time: str | None = None
        self.volume_paths: dict[str, str] | None = None
        self.volumes_synced = 0.0
        self.volume_error = ""
        self.last_status: dict[str, Any] | None = None
        self.finished = False  # reached Succeeded/Failed: nothing more runs
        self.cleaned = False  # torn down after deletion
        self.last_sync = 0.0

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def latest(self, name: str) -> ContainerStatus | None:
        ids = self.attempts.get(name)
        return self.statuses.get(ids[-1]) if ids else None

    def previous(self, name: str) -> ContainerStatus | None:
        ids = self.attempts.get(name) or []
        return self.statuses.get(ids[-2]) if len(ids) > 1 else None


def _spec(pod: Mapping[str, Any]) -> dict[str, Any]:
    return pod.get("spec") or {}


def _terminal(phase: str | None) -> bool:
    return phase in ("Succeeded", "Failed")


class Kubelet:
    """One node. Built and driven by a KubeletPool; ``pool`` supplies the client, queue and shared loops."""

    def __init__(self, config: NodeConfig, runtime: RuntimeService, images: ImageService, pool: KubeletPool) -> None:
        self.config = config
        self.name = config.name
        self.runtime = runtime
        self.images = images
        self.pool = pool
        self.options = pool.options
        self.dir = Path(self.options.data_dir) / self.name
        self.logs_dir = self.dir / "logs"
        self.pods: dict[str, PodRecord] = {}
        self.by_key: dict[str, str] = {}  # namespace/name -> uid
        self.node_uid: str | None = None
        self.runtime_name = ""
        self.runtime_version = ""
        self.runtime_ready = True
        self.runtime_message = ""
        self.lease: dict[str, Any] | None = None
        self.node_conditions: list[dict[str, Any]] = []
        self._reported_at = 0.0
        self._reported_key: Any = None
        self._used: dict[str, int] = {}
        self._admitted_count = 0
        self._pleg: dict[str, ContainerState] = {}
        self.backoff = Backoff(self.options.backoff_initial, self.options.backoff_max)
        self.probes = ProbeManager(runtime, pool.http, pool.enqueue)
        self.volumes = VolumeManager(self.dir / "pods", pool.get_object)
        self.allocatable = nodestatus.allocatable(config)
        self._allocatable_int = {k: to_int(k, v) for k, v in self.allocatable.items()}

    # -- node -----------------------------------------------------------------------------------------------

    def node_status(self) -> dict[str, Any]:
        return nodestatus.node_status(
            self.config, runtime_name=self.runtime_name, runtime_version=self.runtime_version,
            kubelet_port=self.pool.server_port, previous_conditions=self.node_conditions,
            runtime_ready=self.runtime_ready, runtime_message=self.runtime_message)

    async def register(self) -> None:
        """Create the Node (or adopt the existing one) and write its first status."""
        version = await self.runtime.version()
        self.runtime_name, self.runtime_version = version.runtime_name, version.runtime_version
        status = self.node_status()
        node = nodestatus.node_object(self.config, status)
        client = self.pool.client
        try:
            created = await client.create(NODES, node)
        except AlreadyExists:
            # Re-registration (a restarted kubelet): refresh the labels it owns; taints and addresses may have been
            # changed by others (the CCM removes the uninitialized taint) and are left alone.
            created = await client.patch(NODES, self.name, {"metadata": {"labels": nodestatus.node_labels(
                self.config)}})
        self.node_uid = created["metadata"]["uid"]
        await self.write_node_status(force=True, status=status)

    async def write_node_status(self, force: bool = False, status: dict[str, Any] | None = None) -> bool:
        """Write the node status when it changed or the report interval passed; True if written."""
        if status is None:
            await self._check_runtime()
            status = self.node_status()
        key = (self.runtime_ready, self.runtime_message, tuple(sorted(status["allocatable"].items())),
               self.pool.server_port, self.runtime_version)
        now = time.monotonic()
        if not force and key == self._reported_key and now - self._reported_at < self.options.node_status_report_interval:
            return False
        if self.options.max_images_in_status:
            with contextlib.suppress(CRIError):
                status["images"] = nodestatus.images_status(await self.images.list_images(),
                                                            self.options.max_images_in_status)
        # Strategic merge: conditions and addresses merge by type, so what the CCM sets (addresses,
        # NetworkUnavailable) survives the kubelet's own report.
        updated = await self.pool.client.patch(NODES, self.name, {"status": status}, patch_type="strategic",
                                               subresource="status")
        self.node_conditions = [c for c in (updated.get("status") or {}).get("conditions") or []
                                if c.get("type") in ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure")]
        self._reported_key, self._reported_at = key, now
        return True

    async def _check_runtime(self) -> None:
        try:
            st = await self.runtime.status()
            bad = [c for c in st.status.conditions if not c.status]
            self.runtime_ready = not bad
            self.runtime_message = "; ".join(f"{c.type}=false reason:{c.reason} message:{c.message}"
                                             for c in bad)
        except CRIError as e:
            self.runtime_ready, self.runtime_message = False, f"container runtime is down: {e}"

    # -- events from the informer -----------------------------------------------------------------------------

    def pod_updated(self, pod: dict[str, Any], old: dict[str, Any] | None = None) -> None:
        uid = pod["metadata"]["uid"]
        rec = self.pods.get(uid)
        if rec is None:
            rec = PodRecord(pod)
            self.pods[uid] = rec
            self.by_key[rec.key] = uid
            self.pool.own(uid, self)
            self.pool.enqueue(uid)
            return
        rec.pod = pod
        # Our own status writes come back as updates; only spec and deletion changes need a sync.
        if old is None or old.get("spec") != pod.get("spec") or \
                old["metadata"].get("deletionTimestamp") != pod["metadata"].get("deletionTimestamp") or \
                old["metadata"].get("deletionGracePeriodSeconds") != pod["metadata"].get("deletionGracePeriodSeconds"):
            self.pool.enqueue(uid)

    def pod_deleted(self, pod: dict[str, Any]) -> None:
        rec = self.pods.get(pod["metadata"]["uid"])
        if rec is not None:
            rec.deleted = True
            self.pool.enqueue(rec.uid)

    # -- PLEG ---------------------------------------------------------------------------------------------------

    async def relist(self) -> None:
        """Notice container state changes (exits above all) by listing the runtime, and queue their pods."""
        try:
            containers = await self.runtime.list_containers()
        except CRIError as e:
            log.warning("node %s: listing containers failed: %s", self.name, e)
            return
        seen: dict[str, ContainerState] = {}
        for c in containers:
            seen[c.id] = c.state
            if self._pleg.get(c.id) != c.state:
                uid = c.labels.get(POD_UID_LABEL)
                if uid in self.pods:
                    self.pool.enqueue(uid)
        self._pleg = seen
        deadline = time.monotonic() - self.options.resync_period
        for rec in self.pods.values():
            if rec.last_sync < deadline and not rec.cleaned:
                self.pool.enqueue(rec.uid)

    # -- the sync -----------------------------------------------------------------------------------------------

    async def sync(self, uid: str) -> None:
        rec = self.pods.get(uid)
        if rec is None:
            return
        rec.last_sync = time.monotonic()
        if rec.cleaned:
            if rec.deleted:
                self._forget(rec)
            return
        meta = rec.pod["metadata"]
        if rec.deleted or meta.get("deletionTimestamp"):
            await self._terminate(rec)
            return
        if rec.admitted is None:
            self._admit(rec)
        if rec.admitted is False:
            return
        if rec.finished:
            return
        if rec.start_time is None:
            rec.start_time = (rec.pod.get("status") or {}).get("startTime") or nodestatus.rfc3339()
        ready = await self._ensure_sandbox(rec)
        if ready:
            ready = await self._ensure_volumes(rec)
        await self._refresh(rec)
        spec = _spec(rec.pod)
        if ready:
            if await self._sync_init_containers(rec, spec.get("initContainers") or []):
                await self._sync_containers(rec, spec.get("containers") or [])
            await self._refresh(rec)
        status = self._status(rec, ready)
        if _terminal(status["phase"]):
            await self._finish(rec)
        await self._write_status(rec, status)

    # -- admission ----------------------------------------------------------------------------------------------

    def _admit(self, rec: PodRecord) -> None:
        """Upstream's resource-fit admission: reject what does not fit next to the pods already admitted."""
        phase = (rec.pod.get("status") or {}).get("phase")
        if _terminal(phase):
            # A pod that already ended (e.g. before a kubelet restart): nothing to run, nothing to count.
            rec.admitted, rec.finished = True, True
            rec.last_status = rec.pod.get("status")
            return
        requests, _, _ = pod_requests(_spec(rec.pod))
        checks = [("pods", 1, self._admitted_count, self._allocatable_int.get("pods"))]
        for name, amount in requests.items():
            if amount:
                checks.append((name, amount, self._used.get(name, 0), self._allocatable_int.get(name, 0)))
        for name, amount, used, capacity in checks:
            if capacity is not None and used + amount > capacity:
                rec.admitted = False
                message = (f"Pod was rejected: Node didn't have enough resource: {name}, requested: {amount}, "
                           f"used: {used}, capacity: {capacity}")
                self.pool.spawn(self._write_status(rec, rejected_status(rec.pod, f"OutOf{name}", message)))
                return
        rec.admitted, rec.counted = True, True
        rec.requests = requests
        self._admitted_count += 1
        for name, amount in requests.items():
            self._used[name] = self._used.get(name, 0) + amount

    def _release(self, rec: PodRecord) -> None:
        if rec.counted:
            self._admitted_count -= 1
            for name, amount in rec.requests.items():
                self._used[name] = self._used.get(name, 0) - amount
            rec.counted = False

    # -- sandbox and volumes --------------------------------------------------------------------------------------

    def _sandbox_config(self, rec: PodRecord, attempt: int) -> PodSandboxConfig:
        pod, spec = rec.pod, _spec(rec.pod)
        meta = pod["metadata"]
        host_network = bool(spec.get("hostNetwork"))
        ports = [PortMapping(container_port=int(p.get("containerPort", 0)), host_port=int(p["hostPort"]),
                             host_ip=p.get("hostIP", ""))
                 for c in spec.get("containers") or [] for p in c.get("ports") or [] if p.get("hostPort")]
        return PodSandboxConfig(
            metadata=PodSandboxMetadata(rec.name, rec.uid, rec.namespace, attempt),
            # No hostname for host-network pods: they have no UTS namespace of their own to set it in.
            hostname="" if host_network else (spec.get("hostname") or rec.name)[:63],
            log_directory=str(self.logs_dir / f"{rec.namespace}_{rec.name}_{rec.uid}"),
            port_mappings=ports,
            labels={**(meta.get("labels") or {}), POD_NAME_LABEL: rec.name, POD_NAMESPACE_LABEL: rec.namespace,
                    POD_UID_LABEL: rec.uid},
            annotations=dict(meta.get("annotations") or {}),
            linux=LinuxPodSandboxConfig(security_context=LinuxSandboxSecurityContext(
                namespace_options=NamespaceOption(network=NamespaceMode.NODE if host_network else NamespaceMode.POD))),
        )

    async def _ensure_sandbox(self, rec: PodRecord) -> bool:
        if rec.sandbox_id is not None:
            try:
                st = await self.runtime.pod_sandbox_status(rec.sandbox_id)
                if st.state == PodSandboxState.SANDBOX_READY:
                    return True
            except NotFoundError:
                pass
            # The sandbox died: as upstream, start a new one and every container again in it.
            old, rec.sandbox_id = rec.sandbox_id, None
            with contextlib.suppress(CRIError):
                await self.runtime.remove_pod_sandbox(old)
            rec.attempts.clear()
            rec.statuses.clear()
        config = self._sandbox_config(rec, rec.sandbox_attempt + 1)
        try:
            sandbox_id = await self.runtime.run_pod_sandbox(config)
            st = await self.runtime.pod_sandbox_status(sandbox_id)
        except CRIError as e:
            rec.sandbox_error = f"Failed to create pod sandbox: {e}"
            log.warning("pod %s: %s", rec.key, rec.sandbox_error)
            self.pool.enqueue_after(rec.uid, self._retry_delay())
            return False
        rec.sandbox_attempt += 1
        rec.sandbox_id, rec.sandbox_config, rec.sandbox_error = sandbox_id, config, ""
        rec.pod_ip = st.network.ip or (self.config.node_ip if _spec(rec.pod).get("hostNetwork") else "")
        return True

    async def _ensure_volumes(self, rec: PodRecord) -> bool:
        if not _spec(rec.pod).get("volumes"):
            rec.volume_paths = {}
            return True
        if rec.volume_paths is not None and time.monotonic() - rec.volumes_synced < self.options.resync_period:
            return True
        try:
            rec.volume_paths = await self.volumes.setup(rec.pod, rec.pod_ip, self.config.node_ip)
            rec.volumes_synced, rec.volume_error = time.monotonic(), ""
            return True
        except VolumeError as e:
            rec.volume_error = str(e)
            if rec.volume_paths is not None:
                return True  # a refresh failed; the containers keep what they had
            self.pool.enqueue_after(rec.uid, self._retry_delay())
            return False

    def _retry_delay(self) -> float:
        return min(self.options.backoff_initial, 5.0)

    # -- containers ---------------------------------------------------------------------------------------------

    async def _refresh(self, rec: PodRecord) -> None:
        for ids in rec.attempts.values():
            for cid in list(ids):
                try:
                    rec.statuses[cid] = await self.runtime.container_status(cid)
                except NotFoundError:
                    ids.remove(cid)
                    rec.statuses.pop(cid, None)

    async def _pull(self, rec: PodRecord, container: Mapping[str, Any]) -> bool:
        image = ImageSpec(container.get("image", ""))
        policy = container.get("imagePullPolicy", "IfNotPresent")
        name = container["name"]
        try:
            present = await self.images.image_status(image) is not None
            if policy == "Never" and not present:
                rec.waiting[name] = ("ErrImageNeverPull", (f'Container image "{image.image}" is not present with '
                                     "pull policy of Never"))
                return False
            if policy == "Always" or not present:
                await self.images.pull_image(image, sandbox_config=rec.sandbox_config)
        except CRIError as e:
            reason = "ImagePullBackOff" if rec.waiting.get(name, ("",))[0] in ("ErrImagePull",
                                                                                "ImagePullBackOff") else "ErrImagePull"
            rec.waiting[name] = (reason, f'Failed to pull image "{image.image}": {e}')
            return False
        return True

    async def _start(self, rec: PodRecord, container: Mapping[str, Any]) -> bool:
        """Create and start the next attempt of a container; on failure record why it is waiting."""
        name = container["name"]
        if time.monotonic() < rec.retry_at.get(name, 0):
            return False
        assert rec.sandbox_id is not None and rec.sandbox_config is not None
        ok = await self._pull(rec, container)
        if ok:
            try:
                env = await container_env(rec.pod, container, self.pool.get_object, pod_ip=rec.pod_ip,
                                          host_ip=self.config.node_ip, node_allocatable=self.allocatable)
            except ContainerConfigError as e:
                rec.waiting[name] = (e.reason, str(e))
                ok = False
        if not ok:
            rec.retry_at[name] = time.monotonic() + self._retry_delay()
            self.pool.enqueue_after(rec.uid, self._retry_delay())
            return False
        attempt = rec.next_attempt.get(name, 0)
        command, args = expand_command(container, env)
        config = ContainerConfig(
            metadata=ContainerMetadata(name, attempt),
            image=ImageSpec(container.get("image", "")),
            command=command,
            args=args,
            working_dir=container.get("workingDir", ""),
            envs=[KeyValue(k, v) for k, v in env.items()],
            mounts=self.volumes.mounts(container, rec.volume_paths or {}),
            labels={CONTAINER_NAME_LABEL: name, POD_NAME_LABEL: rec.name, POD_NAMESPACE_LABEL: rec.namespace,
                    POD_UID_LABEL: rec.uid},
            annotations={"io.kubernetes.container.restartCount": str(attempt)},
            log_path=f"{name}/{attempt}.log",
            stdin=bool(container.get("stdin")),
            stdin_once=bool(container.get("stdinOnce")),
            tty=bool(container.get("tty")),
            linux=LinuxContainerConfig(resources=_linux_resources(container)),
        )
        try:
            cid = await self.runtime.create_container(rec.sandbox_id, config, rec.sandbox_config)
        except CRIError as e:
            rec.waiting[name] = ("CreateContainerError", str(e))
            rec.retry_at[name] = time.monotonic() + self._retry_delay()
            self.pool.enqueue_after(rec.uid, self._retry_delay())
            return False
        rec.next_attempt[name] = attempt + 1
        ids = rec.attempts.setdefault(name, [])
        ids.append(cid)
        rec.waiting.pop(name, None)
        rec.retry_at.pop(name, None)
        try:
            await self.runtime.start_container(cid)
        except CRIError as e:
            # The container exists and has ended (StartError); the restart policy decides what comes next.
            log.info("pod %s: container %s failed to start: %s", rec.key, name, e)
            self.pool.enqueue(rec.uid)
        while len(ids) > 2:
            await self._remove_container(rec, ids.pop(0))
        return True

    async def _remove_container(self, rec: PodRecord, cid: str) -> None:
        st = rec.statuses.pop(cid, None)
        with contextlib.suppress(CRIError):
            await self.runtime.remove_container(cid)
        if st is not None and st.log_path:
            with contextlib.suppress(OSError):
                os.unlink(st.log_path)  # as containerd does: a removed container's log goes with it

    async def _maybe_restart(self, rec: PodRecord, container: Mapping[str, Any], cur: ContainerStatus) -> bool:
        name = container["name"]
        key = f"{rec.uid}/{name}"
        now = time.time()
        finished = cur.finished_at / 1e9 if cur.finished_at else now
        remaining = self.backoff.remaining(key, finished, now)
        if remaining > 0:
            delay = self.backoff.current(key)
            rec.waiting[name] = ("CrashLoopBackOff", (f"back-off {go_duration(delay)} restarting failed "
                                 f"container={name} pod={rec.name}_{rec.namespace}({rec.uid})"))
            self.pool.enqueue_after(rec.uid, remaining)
            return False
        self.backoff.next(key, finished, now)
        rec.waiting.pop(name, None)
        return await self._start(rec, container)

    async def _sync_init_containers(self, rec: PodRecord, specs: list[dict[str, Any]]) -> bool:
        """Run init containers one at a time, in order; True once all have succeeded."""
        policy = _spec(rec.pod).get("restartPolicy", "Always")
        for c in specs:
            cur = rec.latest(c["name"])
            if cur is None:
                await self._start(rec, c)
                return False
            if cur.state in (ContainerState.CONTAINER_RUNNING, ContainerState.CONTAINER_CREATED,
                             ContainerState.CONTAINER_UNKNOWN):
                return False
            if cur.exit_code == 0:
                continue
            if policy != "Never":
                await self._maybe_restart(rec, c, cur)
            return False
        return True

    async def _sync_containers(self, rec: PodRecord, specs: list[dict[str, Any]]) -> None:
        spec = _spec(rec.pod)
        policy = spec.get("restartPolicy", "Always")
        for c in specs:
            name = c["name"]
            cur = rec.latest(name)
            if cur is None:
                await self._start(rec, c)
                continue
            if cur.state == ContainerState.CONTAINER_RUNNING:
                failure = self.probes.liveness_failure(rec.uid, name, cur.id)
                if failure is None:
                    self.probes.ensure(rec.uid, c, cur.id, cur.started_at / 1e9, rec.pod_ip)
                    continue
                log.info("pod %s: container %s failed liveness probe, will be restarted: %s", rec.key, name,
                         failure)
                self.probes.stop_container(rec.uid, name)
                grace = float(spec.get("terminationGracePeriodSeconds", 30))
                with contextlib.suppress(CRIError):
                    await self.runtime.stop_container(cur.id, grace)
                with contextlib.suppress(NotFoundError):
                    cur = rec.statuses[cur.id] = await self.runtime.container_status(cur.id)
            if cur.state == ContainerState.CONTAINER_EXITED and (
                    policy == "Always" or (policy == "OnFailure" and cur.exit_code != 0)):
                await self._maybe_restart(rec, c, cur)

    # -- status -------------------------------------------------------------------------------------------------

    def _views(self, rec: PodRecord, specs: list[dict[str, Any]]) -> list[ContainerView]:
        views = []
        for c in specs:
            name = c["name"]
            cur, prev = rec.latest(name), rec.previous(name)
            running = cur is not None and cur.state == ContainerState.CONTAINER_RUNNING
            # A probe whose worker has not run yet counts as not passed: a new container is neither started nor
            # ready before its first successful startup/readiness probe.
            started = bool(running and (self.probes.result(rec.uid, name, STARTUP, cur.id)  # type: ignore[union-attr]
                                        if c.get(STARTUP) else True))
            readiness = (self.probes.result(rec.uid, name, READINESS, cur.id) or False  # type: ignore[union-attr]
                         if running and c.get(READINESS) else None)
            waiting = rec.waiting.get(name)
            if waiting is None and cur is None and (rec.sandbox_error or rec.volume_error):
                waiting = ("ContainerCreating", "")
            views.append(ContainerView(
                name=name, image=c.get("image", ""), current=cur, previous=prev,
                restart_count=max(0, rec.next_attempt.get(name, 0) - 1) if cur is not None else 0,
                waiting=waiting, ready=bool(running and started and readiness is not False), started=started))
        return views

    def _status(self, rec: PodRecord, sandbox_ready: bool) -> dict[str, Any]:
        spec = _spec(rec.pod)
        pod = rec.pod
        if rec.last_status is not None:
            # Our own last write is the truth for the conditions we own; the informer's copy may lag behind it.
            mine = {c["type"]: c for c in rec.last_status.get("conditions") or [] if c.get("type") in
                    KUBELET_CONDITIONS}
            others = [c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") not in mine]
            pod = {**pod, "status": {**(pod.get("status") or {}), "conditions": [*others, *mine.values()]}}
        return pod_status(pod, runtime_name=self.runtime_name or "cri", sandbox_ready=sandbox_ready,
                          pod_ip=rec.pod_ip, host_ip=self.config.node_ip, start_time=rec.start_time,
                          init_views=self._views(rec, spec.get("initContainers") or []),
                          views=self._views(rec, spec.get("containers") or []))

    async def _write_status(self, rec: PodRecord, status: dict[str, Any]) -> None:
        if status == rec.last_status:
            return
        # A JSON patch whose first operation tests the uid: a pod recreated under the same name never gets the
        # status of the one it replaced (upstream puts the uid in its patch for the same reason).
        patch = [{"op": "test", "path": "/metadata/uid", "value": rec.uid},
                 {"op": "add", "path": "/status", "value": status}]
        try:
            await self.pool.client.patch(PODS, rec.name, patch, rec.namespace, patch_type="json",
                                         subresource="status")
        except (NotFound, Invalid, Conflict):
            return  # gone, or replaced by another pod of that name (the uid test fails): the informer will tell us
        rec.last_status = status

    async def _finish(self, rec: PodRecord) -> None:
        """A pod that reached Succeeded or Failed: nothing runs any more, the sandbox is stopped."""
        self.probes.stop_pod(rec.uid)
        self._release(rec)
        rec.finished = True
        if rec.sandbox_id is not None:
            with contextlib.suppress(CRIError):
                await self.runtime.stop_pod_sandbox(rec.sandbox_id)

    # -- termination --------------------------------------------------------------------------------------------

    async def _terminate(self, rec: PodRecord) -> None:
        """Graceful deletion: preStop hooks, then stop every container within the pod's grace period, then remove
        the pod from the API server (DELETE with gracePeriodSeconds=0) and clean up after it."""
        pod = rec.pod
        spec, meta = _spec(pod), pod["metadata"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        deadline = time.monotonic() + max(0.0, float(grace))
        self.probes.stop_pod(rec.uid)
        await self._refresh(rec)
        specs = {c["name"]: c for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]}
        running = [(specs.get(name, {}), cur.id) for name in rec.attempts
                   if (cur := rec.latest(name)) is not None and cur.state == ContainerState.CONTAINER_RUNNING]
        await asyncio.gather(*(self._kill(rec, c, cid, deadline) for c, cid in running))
        if rec.sandbox_id is not None:
            with contextlib.suppress(CRIError):
                await self.runtime.stop_pod_sandbox(rec.sandbox_id)
        await self._refresh(rec)
        if not rec.deleted and rec.admitted:
            status = self._status(rec, False)
            views = self._views(rec, spec.get("containers") or [])
            if not _terminal(status["phase"]):
                # Since 1.27 the kubelet moves a deleted pod to a terminal phase before it goes.
                ok = all(v.current is not None and v.current.exit_code == 0 for v in views)
                status["phase"] = "Succeeded" if ok else "Failed"
            with contextlib.suppress(ApiError):
                await self._write_status(rec, status)
        if not rec.deleted:
            with contextlib.suppress(NotFound, Conflict):
                await self.pool.client.delete(PODS, rec.name, rec.namespace, grace_period_seconds=0,
                                              preconditions={"uid": rec.uid})
        await self._cleanup(rec)

    async def _kill(self, rec: PodRecord, container: Mapping[str, Any], cid: str, deadline: float) -> None:
        pre_stop = ((container.get("lifecycle") or {}).get("preStop")) or {}
        try:
            if "exec" in pre_stop:
                cmd = list((pre_stop["exec"] or {}).get("command") or [])
                async with asyncio.timeout(max(0.001, deadline - time.monotonic())):
                    await self.runtime.exec_sync(cid, cmd, max(0.0, deadline - time.monotonic()))
            elif "httpGet" in pre_stop:
                hg = pre_stop["httpGet"]
                url = f"{str(hg.get('scheme', 'HTTP')).lower()}://{hg.get('host') or rec.pod_ip}:{hg.get('port')}" \
                      f"{hg.get('path', '/')}"
                await self.pool.http.get(url, timeout=max(0.001, deadline - time.monotonic()))
            elif "sleep" in pre_stop:
                await asyncio.sleep(min(float(pre_stop["sleep"].get("seconds", 0)), deadline - time.monotonic()))
        except Exception as e:  # noqa: BLE001 - a failed hook does not stop the termination (as upstream)
            log.info("pod %s: preStop hook of %s failed: %r", rec.key, container.get("name"), e)
        with contextlib.suppress(CRIError):
            await self.runtime.stop_container(cid, max(0.0, deadline - time.monotonic()))

    async def _cleanup(self, rec: PodRecord) -> None:
        self.probes.stop_pod(rec.uid)
        self._release(rec)
        if rec.sandbox_id is not None:
            with contextlib.suppress(CRIError):
                await self.runtime.remove_pod_sandbox(rec.sandbox_id)
        if rec.sandbox_config is not None and rec.sandbox_config.log_directory:
            await asyncio.to_thread(shutil.rmtree, rec.sandbox_config.log_directory, True)
        if _spec(rec.pod).get("volumes"):
            await self.volumes.teardown(rec.uid)
        self.backoff.forget(f"{rec.uid}/")
        rec.cleaned = True
        rec.finished = True
        if rec.deleted:
            self._forget(rec)

    def _forget(self, rec: PodRecord) -> None:
        self.pods.pop(rec.uid, None)
        if self.by_key.get(rec.key) == rec.uid:
            del self.by_key[rec.key]
        self.pool.disown(rec.uid)

    async def shutdown(self) -> None:
        self.probes.stop_all()

    # -- logs, exec and stats (for the kubelet's server) --------------------------------------------------------

    def pod_by_key(self, namespace: str, name: str) -> PodRecord | None:
        uid = self.by_key.get(f"{namespace}/{name}")
        return self.pods.get(uid) if uid else None

    def log_container(self, rec: PodRecord, name: str, previous: bool) -> ContainerStatus:
        """The container whose log ``kubectl logs`` asks for, by upstream's rules; ValueError with upstream's
        message when there is none."""
        known = {c["name"] for c in [*(_spec(rec.pod).get("initContainers") or []),
                                     *(_spec(rec.pod).get("containers") or [])]}
        if name not in known:
            raise LookupError(f'container {name} is not valid for pod {rec.name}')
        cur, prev = rec.latest(name), rec.previous(name)
        if previous:
            # The last terminated instance: the one before the current, or the current one if it has ended and
            # waits to restart (what lastState.terminated names).
            if cur is not None and cur.state == ContainerState.CONTAINER_EXITED and name in rec.waiting:
                return cur
            if prev is not None:
                return prev
            raise ValueError(f'previous terminated container "{name}" in pod "{rec.name}" not found')
        if cur is None:
            reason = rec.waiting.get(name, ("ContainerCreating",))[0]
            raise ValueError(f'container "{name}" in pod "{rec.name}" is waiting to start: {reason}')
        return cur

    async def container_running(self, cid: str) -> bool:
        try:
            return (await self.runtime.container_status(cid)).state == ContainerState.CONTAINER_RUNNING
        except NotFoundError:
            return False

    def running_container_id(self, rec: PodRecord, name: str) -> str | None:
        cur = rec.latest(name)
        return cur.id if cur is not None and cur.state == ContainerState.CONTAINER_RUNNING else None

    async def stats_summary(self) -> dict[str, Any]:
        """Per-pod and per-container CPU and memory, shaped like the kubelet's /stats/summary (what metrics-server
        and the HPA read)."""
        try:
            stats = await self.runtime.list_container_stats()
        except CRIError:
            stats = []
        by_id: dict[str, ContainerStats] = {s.attributes.id: s for s in stats}
        now = nodestatus.rfc3339()
        pods = []
        node_cpu = node_cpu_total = node_mem = 0
        for rec in self.pods.values():
            if rec.cleaned:
                continue
            containers = []
            pod_cpu = pod_cpu_total = pod_mem = 0
            for name, ids in rec.attempts.items():
                cur = rec.statuses.get(ids[-1]) if ids else None
                if cur is None or cur.state != ContainerState.CONTAINER_RUNNING or cur.id not in by_id:
                    continue
                s = by_id[cur.id]
                cpu = (s.cpu.usage_nano_cores or 0) if s.cpu else 0
                cpu_total = (s.cpu.usage_core_nano_seconds or 0) if s.cpu else 0
                mem = (s.memory.working_set_bytes or 0) if s.memory else 0
                pod_cpu, pod_cpu_total, pod_mem = pod_cpu + cpu, pod_cpu_total + cpu_total, pod_mem + mem
                containers.append({
                    "name": name,
                    "startTime": nodestatus.rfc3339(cur.started_at / 1e9) if cur.started_at else now,
                    "cpu": {"time": now, "usageNanoCores": cpu, "usageCoreNanoSeconds": cpu_total},
                    "memory": {"time": now, "workingSetBytes": mem, "usageBytes": mem,
                               "rssBytes": (s.memory.rss_bytes or 0) if s.memory else 0},
                })
            node_cpu, node_cpu_total, node_mem = node_cpu + pod_cpu, node_cpu_total + pod_cpu_total, node_mem + pod_mem
            pods.append({
                "podRef": {"name": rec.name, "namespace": rec.namespace, "uid": rec.uid},
                "startTime": rec.start_time or now,
                "containers": containers,
                "cpu": {"time": now, "usageNanoCores": pod_cpu, "usageCoreNanoSeconds": pod_cpu_total},
                "memory": {"time": now, "workingSetBytes": pod_mem, "usageBytes": pod_mem},
            })
        return {
            "node": {"nodeName": self.name, "startTime": now,
                     "cpu": {"time": now, "usageNanoCores": node_cpu, "usageCoreNanoSeconds": node_cpu_total},
                     "memory": {"time": now, "workingSetBytes": node_mem, "usageBytes": node_mem}},
            "pods": pods,
        }

    def pod_list(self) -> dict[str, Any]:
        return {"kind": "PodList", "apiVersion": "v1", "metadata": {},
                "items": [rec.pod for rec in self.pods.values() if not rec.cleaned]}


def _linux_resources(container: Mapping[str, Any]) -> LinuxContainerResources:
    """CPU shares/quota and memory limit as upstream computes them (recorded by every runtime, enforced by real
    ones)."""
    res = container.get("resources") or {}
    requests, limits = res.get("requests") or {}, res.get("limits") or {}
    out = LinuxContainerResources()
    cpu_request = to_int("cpu", requests["cpu"]) if "cpu" in requests else 0
    out.cpu_shares = max(2, cpu_request * 1024 // 1000) if cpu_request else 2
    if "cpu" in limits:
        out.cpu_period = 100_000
        out.cpu_quota = max(1000, to_int("cpu", limits["cpu"]) * 100_000 // 1000)
    if "memory" in limits:
        out.memory_limit_in_bytes = to_int("memory", limits["memory"])
    return out
