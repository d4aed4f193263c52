"""Where the API server is and how to authenticate to it, read from a URL or from a kubeconfig file.

Every component can run against ccmkit's own API server or a real cluster, so the client reads the same kubeconfig
kubectl reads. Certificates given inline (``*-data``) are kept in memory where the ssl module allows (the CA) and
written to private temporary files where it needs a path (the client certificate and key).
"""

from __future__ import annotations

import atexit
import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_KUBECONFIG = Path.home() / ".kube" / "config"


@dataclass(frozen=True, slots=True)
class ClientConfig:
    server: str  # base URL, e.g. https://127.0.0.1:6443
    token: str | None = None  # bearer token
    ca_file: str | None = None
    ca_data: bytes | None = None  # PEM, as an alternative to ca_file
    insecure: bool = False  # skip TLS verification
    cert_file: str | None = None  # client certificate (PEM)
    key_file: str | None = None
    username: str | None = None  # basic auth, still found in old kubeconfigs
    password: str | None = None
    namespace: str = "default"  # used for namespaced objects when a call names no namespace
    tls_server_name: str | None = None
    proxy_url: str | None = None
    timeout: float = 30.0  # seconds for ordinary requests (watches set their own)

    def ssl_context(self) -> ssl.SSLContext | bool:
        """What to hand httpx as ``verify``: False for plain http or an insecure config, else an SSLContext."""
        if not self.server.startswith("https"):
            return False
        if self.insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx = ssl.create_default_context(
                cafile=self.ca_file, cadata=self.ca_data.decode() if self.ca_data else None
            )
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def from_url(url: str, *, token: str | None = None, namespace: str = "default", insecure: bool = False) -> ClientConfig:
    """A config for a server reachable at ``url`` (typically ccmkit's own plain-http API server in tests)."""
    return ClientConfig(server=url.rstrip("/"), token=token, namespace=namespace, insecure=insecure)


class KubeconfigError(ValueError):
    pass


def load_kubeconfig(path: str | os.PathLike[str] | None = None, context: str | None = None) -> ClientConfig:
    """Read a kubeconfig as kubectl does: ``path``, else the first file in ``$KUBECONFIG``, else ~/.kube/config.

    Uses ``context`` or the file's current-context. Relative file paths in the kubeconfig are relative to the file.
    Not supported: merging several files listed in $KUBECONFIG, exec and auth-provider credential plugins.
    """
    if path is None:
        env = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
        path = next((p for p in env if Path(p).exists()), None) or DEFAULT_KUBECONFIG
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise KubeconfigError(f"cannot read kubeconfig {path}: {e}") from e
    return parse_kubeconfig(doc or {}, context=context, base_dir=path.parent)


def parse_kubeconfig(doc: dict[str, Any], *, context: str | None = None, base_dir: Path | None = None) -> ClientConfig:
    """The ClientConfig for one context of an already-parsed kubeconfig document."""
    context_name = context or doc.get("current-context")
    if not context_name:
        raise KubeconfigError("kubeconfig has no current-context and no context was given")
    ctx = _named(doc, "contexts", "context", context_name)
    cluster = _named(doc, "clusters", "cluster", ctx.get("cluster"))
    user = _named(doc, "users", "user", ctx["user"]) if ctx.get("user") else {}
    if "exec" in user or "auth-provider" in user:
        raise KubeconfigError(f"context {context_name!r}: exec and auth-provider credentials are not supported")
    server = cluster.get("server")
    if not server:
        raise KubeconfigError(f"cluster {ctx.get('cluster')!r} has no server")

    def file_path(key: str, source: dict[str, Any]) -> str | None:
        value = source.get(key)
        if not value:
            return None
        p = Path(os.path.expanduser(value))
        return str(p if p.is_absolute() or base_dir is None else base_dir / p)

    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(file_path("tokenFile", user) or "").read_text().strip()

    ca_data = _b64(cluster.get("certificate-authority-data"))
    cert_file = file_path("client-certificate", user)
    if user.get("client-certificate-data"):
        cert_file = _private_temp_file(_b64(user["client-certificate-data"]) or b"", ".crt")
    key_file = file_path("client-key", user)
    if user.get("client-key-data"):
        key_file = _private_temp_file(_b64(user["client-key-data"]) or b"", ".key")

    return ClientConfig(
        server=str(server).rstrip("/"),
        token=token or None,
        ca_file=None if ca_data else file_path("certificate-authority", cluster),
        ca_data=ca_data,
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        cert_file=cert_file,
        key_file=key_file,
        username=user.get("username"),
        password=user.get("password"),
        namespace=ctx.get("namespace") or "default",
        tls_server_name=cluster.get("tls-server-name"),
        proxy_url=cluster.get("proxy-url"),
    )


def _named(doc: dict[str, Any], section: str, field: str, name: Any) -> dict[str, Any]:
    for entry in doc.get(section) or []:
        if entry.get("name") == name:
            return entry.get(field) or {}
    raise KubeconfigError(f"kubeconfig has no {section[:-1]} named {name!r}")


def _b64(value: str | None) -> bytes | None:
    return base64.b64decode(value) if value else None


_temp_files: list[str] = []


def _private_temp_file(data: bytes, suffix: str) -> str:
    # ssl.SSLContext.load_cert_chain only takes paths. mkstemp creates the file 0600, which matters for a key.
    fd, name = tempfile.mkstemp(prefix="ccmkit-kubeconfig-", suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    if not _temp_files:
        atexit.register(_remove_temp_files)
    _temp_files.append(name)
    return name


def _remove_temp_files() -> None:
    for name in _temp_files:
        try:
            os.unlink(name)
        except OSError:
            pass
