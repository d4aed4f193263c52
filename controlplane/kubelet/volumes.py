"""Pod volumes on the node: emptyDir, configMap, secret, downwardAPI, projected and hostPath, as host directories
handed to the runtime as CRI mounts.

Every runtime mounts host paths (containerd bind-mounts them, the process runtime links them into the container's
root), so the kubelet's job is only to lay out the files under ``<pods dir>/<uid>/volumes/<plugin>/<name>`` the way
upstream does and to keep configMap/secret contents current on each resync. A missing ConfigMap or Secret is a
mount failure: the pod waits in ContainerCreating and the next sync tries again.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .cri.api import Mount
from .envvars import ObjectGetter, field_ref

_PLUGIN_DIRS = {
    "emptyDir": "kubernetes.io~empty-dir",
    "configMap": "kubernetes.io~configmap",
    "secret": "kubernetes.io~secret",
    "downwardAPI": "kubernetes.io~downward-api",
    "projected": "kubernetes.io~projected",
}


class VolumeError(Exception):
    """A volume could not be set up; the message is upstream's FailedMount wording."""


def _files_from(kind: str, obj: Mapping[str, Any], items: list[dict[str, Any]] | None,
                default_mode: int) -> dict[str, tuple[bytes, int]]:
    data: dict[str, bytes] = {}
    for k, v in (obj.get("data") or {}).items():
        data[k] = base64.b64decode(v) if kind == "Secret" else str(v).encode()
    if kind == "ConfigMap":
        for k, v in (obj.get("binaryData") or {}).items():
            data[k] = base64.b64decode(v)
    if not items:
        return {k: (v, default_mode) for k, v in data.items()}
    out = {}
    for item in items:
        key = item.get("key")
        if key not in data:
            raise VolumeError(f"configmap references non-existent config key: {key}" if kind == "ConfigMap"
                              else f"references non-existent secret key: {key}")
        out[item.get("path", key)] = (data[key], int(item.get("mode", default_mode)))
    return out


class VolumeManager:
    """Sets volumes up under ``pods_dir`` and turns volumeMounts into CRI mounts."""

    def __init__(self, pods_dir: Path, getter: ObjectGetter) -> None:
        self.pods_dir = Path(pods_dir)
        self.getter = getter

    def pod_dir(self, uid: str) -> Path:
        return self.pods_dir / uid

    async def setup(self, pod: Mapping[str, Any], pod_ip: str = "", host_ip: str = "") -> dict[str, str]:
        """Create or refresh every volume of the pod; returns volume name -> host path."""
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        uid, namespace = meta.get("uid", ""), meta.get("namespace", "default")
        paths: dict[str, str] = {}
        writes: list[tuple[Path, dict[str, tuple[bytes, int]]]] = []
        for vol in spec.get("volumes") or []:
            name = vol.get("name", "")
            if "hostPath" in vol:
                hp = vol["hostPath"] or {}
                path, type_ = hp.get("path", ""), hp.get("type", "")
                await asyncio.to_thread(_ensure_host_path, path, type_, name)
                paths[name] = path
                continue
            plugin = next((p for p in _PLUGIN_DIRS if p in vol), None)
            if plugin is None:
                # persistentVolumeClaim, csi, ...: not attachable here; give the container an empty directory so it
                # can run (the volume controllers of the CCM own real attachments).
                plugin = "emptyDir"
            target = self.pod_dir(uid) / "volumes" / _PLUGIN_DIRS[plugin] / name
            paths[name] = str(target)
            if plugin == "emptyDir":
                writes.append((target, {}))
                continue
            source = vol[plugin] or {}
            default_mode = int(source.get("defaultMode", 0o644))
            files: dict[str, tuple[bytes, int]] = {}
            if plugin == "projected":
                for src in source.get("sources") or []:
                    files.update(await self._source_files(src, namespace, pod, default_mode, name, pod_ip, host_ip))
            else:
                files = await self._source_files({plugin: source}, namespace, pod, default_mode, name, pod_ip,
                                                 host_ip)
            writes.append((target, files))
        if writes:
            await asyncio.to_thread(_write_volumes, writes)
        return paths

    async def _source_files(self, src: Mapping[str, Any], namespace: str, pod: Mapping[str, Any],
                            default_mode: int, volume: str, pod_ip: str, host_ip: str) -> dict[str, tuple[bytes, int]]:
        for kind, key in (("ConfigMap", "configMap"), ("Secret", "secret")):
            if key not in src:
                continue
            ref = src[key] or {}
            name = ref.get("name") or ref.get("secretName") or ""
            obj = await self.getter(kind, namespace, name)
            if obj is None:
                if ref.get("optional"):
                    return {}
                raise VolumeError(f'MountVolume.SetUp failed for volume "{volume}" : {kind.lower()} "{name}" '
                                  "not found")
            try:
                return _files_from(kind, obj, ref.get("items"), int(ref.get("defaultMode", default_mode)))
            except VolumeError as e:
                raise VolumeError(f'MountVolume.SetUp failed for volume "{volume}" : {e}') from None
        if "downwardAPI" in src:
            files = {}
            for item in (src["downwardAPI"] or {}).get("items") or []:
                if "fieldRef" in item:
                    value = field_ref(pod, item["fieldRef"].get("fieldPath", ""), pod_ip, host_ip)
                    files[item.get("path", "")] = (value.encode(), int(item.get("mode", default_mode)))
            return files
        return {}

    def mounts(self, container: Mapping[str, Any], paths: Mapping[str, str]) -> list[Mount]:
        out = []
        for vm in container.get("volumeMounts") or []:
            host = paths.get(vm.get("name", ""))
            if host is None:
                continue
            if vm.get("subPath"):
                host = os.path.join(host, vm["subPath"])
            out.append(Mount(container_path=vm.get("mountPath", ""), host_path=host,
                             readonly=bool(vm.get("readOnly"))))
        return out

    async def teardown(self, uid: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self.pod_dir(uid), True)


def _ensure_host_path(path: str, type_: str, volume: str) -> None:
    p = Path(path)
    if type_ == "DirectoryOrCreate":
        p.mkdir(parents=True, exist_ok=True)
    elif type_ == "FileOrCreate":
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch(exist_ok=True)
    elif type_ == "Directory" and not p.is_dir():
        raise VolumeError(f'MountVolume.SetUp failed for volume "{volume}" : hostPath type check failed: {path} is '
                          "not a directory")
    elif type_ == "File" and not p.is_file():
        raise VolumeError(f'MountVolume.SetUp failed for volume "{volume}" : hostPath type check failed: {path} is '
                          "not a file")


def _write_volumes(writes: list[tuple[Path, dict[str, tuple[bytes, int]]]]) -> None:
    for target, files in writes:
        target.mkdir(parents=True, exist_ok=True)
        for rel, (data, mode) in files.items():
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                if path.read_bytes() == data and (path.stat().st_mode & 0o777) == mode:
                    continue
            except OSError:
                pass
            # Write then rename, so a reader in the container never sees half a file.
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(data)
            os.chmod(tmp, mode)
            tmp.replace(path)
        if files:
            wanted = {str(target / rel) for rel in files}
            for entry in target.rglob("*"):
                if entry.is_file() and str(entry) not in wanted:
                    entry.unlink()
