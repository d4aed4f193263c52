"""Reading kubeconfig files as kubectl does, and the TLS settings they produce working against a real TLS server."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ssl
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controlplane.client import ApiClient, KubeconfigError, from_url, load_kubeconfig


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def make_cert(
    cn: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None, *, ca: bool = False,
    server: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    return cert, key


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def pki() -> dict[str, bytes]:
    ca = make_cert("ccmkit-ca", ca=True)
    srv = make_cert("localhost", ca, server=True)
    cli = make_cert("system:admin", ca)
    return {"ca": pem(ca[0]), "server": pem(srv[0]), "server_key": key_pem(srv[1]),
            "client": pem(cli[0]), "client_key": key_pem(cli[1])}


def kubeconfig(**overrides: object) -> dict:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "dev",
        "clusters": [
            {"name": "local", "cluster": {"server": "https://localhost:6443/", "certificate-authority": "ca.crt"}},
            {"name": "other", "cluster": {"server": "http://10.0.0.1:8080", "insecure-skip-tls-verify": True}},
        ],
        "users": [
            {"name": "admin", "user": {"client-certificate": "/abs/admin.crt", "client-key": "admin.key"}},
            {"name": "bot", "user": {"token": "s3cret"}},
            {"name": "plugin", "user": {"exec": {"command": "aws"}}},
        ],
        "contexts": [
            {"name": "dev", "context": {"cluster": "local", "user": "admin", "namespace": "team-a"}},
            {"name": "ops", "context": {"cluster": "other", "user": "bot"}},
            {"name": "cloud", "context": {"cluster": "local", "user": "plugin"}},
        ],
    }
    doc.update(overrides)
    return doc


def write(tmp_path: Path, doc: dict, name: str = "config") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def test_current_context_with_file_paths_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    cfg = load_kubeconfig(write(tmp_path, kubeconfig()))
    assert cfg.server == "https://localhost:6443"
    assert cfg.namespace == "team-a"
    assert cfg.ca_file == str(tmp_path / "ca.crt")
    assert cfg.cert_file == "/abs/admin.crt"
    assert cfg.key_file == str(tmp_path / "admin.key")
    assert cfg.token is None and not cfg.insecure


def test_named_context_with_token_and_insecure(tmp_path: Path) -> None:
    cfg = load_kubeconfig(write(tmp_path, kubeconfig()), context="ops")
    assert (cfg.server, cfg.token, cfg.insecure, cfg.namespace) == ("http://10.0.0.1:8080", "s3cret", True, "default")


def test_kubeconfig_env_var_is_used_when_no_path_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, kubeconfig(**{"current-context": "ops"}))
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'missing'}:{path}")
    assert load_kubeconfig().token == "s3cret"


def test_errors(tmp_path: Path) -> None:
    path = write(tmp_path, kubeconfig())
    with pytest.raises(KubeconfigError, match="no context named"):
        load_kubeconfig(path, context="nope")
    with pytest.raises(KubeconfigError, match="exec"):
        load_kubeconfig(path, context="cloud")
    with pytest.raises(KubeconfigError, match="current-context"):
        load_kubeconfig(write(tmp_path, kubeconfig(**{"current-context": ""}), "empty"))
    with pytest.raises(KubeconfigError, match="cannot read"):
        load_kubeconfig(tmp_path / "absent")


def test_inline_data_fields(tmp_path: Path, pki: dict[str, bytes]) -> None:
    doc = kubeconfig()
    doc["clusters"][0]["cluster"] = {"server": "https://localhost:6443", "certificate-authority-data": b64(pki["ca"])}
    doc["users"][0]["user"] = {"client-certificate-data": b64(pki["client"]), "client-key-data": b64(pki["client_key"])}
    cfg = load_kubeconfig(write(tmp_path, doc))
    assert cfg.ca_data == pki["ca"] and cfg.ca_file is None
    assert Path(cfg.cert_file).read_bytes() == pki["client"]
    assert Path(cfg.key_file).read_bytes() == pki["client_key"]
    assert Path(cfg.key_file).stat().st_mode & 0o077 == 0, "a private key must not be readable by others"
    assert isinstance(cfg.ssl_context(), ssl.SSLContext)


def test_from_url() -> None:
    cfg = from_url("http://127.0.0.1:8080/", token="t")
    assert (cfg.server, cfg.token, cfg.namespace) == ("http://127.0.0.1:8080", "t", "default")
    assert cfg.ssl_context() is False


async def test_client_authenticates_with_kubeconfig_tls_material(tmp_path: Path, pki: dict[str, bytes]) -> None:
    # A real TLS server that requires a client certificate signed by the same CA: proves the kubeconfig's material
    # reaches the handshake (server verified against certificate-authority-data, client cert presented).
    (tmp_path / "ca.pem").write_bytes(pki["ca"])
    (tmp_path / "srv.pem").write_bytes(pki["server"] + pki["server_key"])
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp_path / "ca.pem"))
    server_ctx.load_cert_chain(str(tmp_path / "srv.pem"))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    peers: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cert = writer.get_extra_info("peercert")
        peers.append(dict(x[0] for x in cert["subject"])["commonName"])
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        body = b'{"major": "1", "minor": "31", "gitVersion": "v1.31.0"}'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    doc = kubeconfig()
    doc["clusters"][0]["cluster"] = {"server": f"https://localhost:{port}", "certificate-authority-data": b64(pki["ca"])}
    doc["users"][0]["user"] = {"client-certificate-data": b64(pki["client"]), "client-key-data": b64(pki["client_key"])}
    try:
        async with ApiClient(load_kubeconfig(write(tmp_path, doc))) as client:
            assert (await client.version())["minor"] == "31"
        assert peers == ["system:admin"]

        # Without the CA the server's certificate must be refused.
        doc["clusters"][0]["cluster"].pop("certificate-authority-data")
        async with ApiClient(load_kubeconfig(write(tmp_path, doc, "noca"))) as client:
            with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
                await client.version()
    finally:
        server.close()
        await server.wait_closed()
