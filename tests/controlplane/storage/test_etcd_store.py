"""What the etcd backend promises beyond the shared Store contract: bounded unavailability and failover between
endpoints, prefixes that isolate stores sharing a cluster, kube-apiserver-style periodic compaction, and a clear
error when etcd is not installed. The contract itself runs against etcd through STORE_FACTORIES."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest
from storage_helpers import closed_port, wait_until

from controlplane.storage import (
    ConflictError,
    ExpiredError,
    GuardedCreate,
    KeyExistsError,
    KeyNotFoundError,
    UnavailableError,
)
from controlplane.storage.etcd import EtcdStore
from controlplane.storage.etcd_process import EtcdNotFoundError, EtcdTLS, LocalEtcd

needs_etcd = pytest.mark.skipif(
    shutil.which("etcd") is None, reason="the etcd binary is not installed (apt-get install etcd-server)"
)
pytestmark = [pytest.mark.timeout(30)]


def test_missing_binary_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(EtcdNotFoundError, match="apt-get install etcd-server"):
        LocalEtcd(tmp_path / "etcd", etcd_binary="/nonexistent/etcd")


@needs_etcd
@pytest.mark.etcd
async def test_unreachable_first_endpoint_fails_over_to_the_next(etcd: LocalEtcd) -> None:
    store = EtcdStore([f"http://127.0.0.1:{closed_port()}", etcd.endpoint], timeout=2, compaction_interval=0)
    try:
        created = await store.create("/registry/pods/default/a", b"x")
        assert (await store.get("/registry/pods/default/a")) == created
    finally:
        await store.close()


@needs_etcd
@pytest.mark.etcd
async def test_no_member_answering_raises_unavailable_within_the_timeout(etcd: LocalEtcd) -> None:
    store = EtcdStore([etcd.endpoint], timeout=1.0, compaction_interval=0)
    try:
        await store.create("/registry/pods/default/a", b"x")
        etcd.kill()
        for operation in (
            lambda: store.get("/registry/pods/default/a"),
            lambda: store.create("/registry/pods/default/b", b"x"),
            lambda: store.list("/registry/pods/"),
        ):
            started = time.monotonic()
            with pytest.raises(UnavailableError):
                await operation()
            assert time.monotonic() - started < 1.5

        # The same member back on its old data: the store reconnects by itself.
        await etcd.start()
        assert (await asyncio.wait_for(store.get("/registry/pods/default/a"), 5)).value == b"x"
    finally:
        await store.close()


@needs_etcd
@pytest.mark.etcd
async def test_prefixes_isolate_stores_sharing_a_cluster(etcd: LocalEtcd) -> None:
    a = EtcdStore([etcd.endpoint], prefix="/tenant-a", compaction_interval=0)
    b = EtcdStore([etcd.endpoint], prefix="/tenant-b", compaction_interval=0)
    try:
        await a.create("/registry/pods/default/x", b"a")
        await b.create("/registry/pods/default/x", b"b")
        await a.compact(await a.current_revision())  # writes a.'s bookkeeping key, which must stay invisible
        assert [(kv.key, kv.value) for kv in (await a.list("")).items] == [("/registry/pods/default/x", b"a")]
        assert await a.count("") == 1 and await b.count("") == 1
        await b.delete("/registry/pods/default/x")
        assert (await a.get("/registry/pods/default/x")).value == b"a"
        with pytest.raises(KeyNotFoundError):
            await b.get("/registry/pods/default/x")
    finally:
        await a.close()
        await b.close()


@needs_etcd
@pytest.mark.etcd
async def test_concurrent_gets_are_batched_and_each_gets_its_own_answer(etcd: LocalEtcd) -> None:
    store = EtcdStore([etcd.endpoint], compaction_interval=0)
    try:
        written = {f"/registry/configmaps/default/cm-{i:03d}": await store.create(
            f"/registry/configmaps/default/cm-{i:03d}", b"v%d" % i) for i in range(0, 300, 2)}
        keys = [f"/registry/configmaps/default/cm-{i:03d}" for i in range(300)]  # every other one is missing
        answers = await asyncio.gather(*(store.get(k) for k in keys), return_exceptions=True)
        assert store._read_task is not None, "no get was batched"
        for key, answer in zip(keys, answers):
            if key in written:
                assert answer == written[key]
            else:
                assert isinstance(answer, KeyNotFoundError) and answer.key == key
        # A get issued after a write returned, while reads issued before it are still in flight, sees the write.
        before = [asyncio.ensure_future(store.get(k)) for k in list(written)[:50]]
        updated = await store.update(keys[0], b"new", written[keys[0]].revision)
        assert await store.get(keys[0]) == updated
        assert [kv.key for kv in await asyncio.gather(*before)] == list(written)[:50]
    finally:
        await store.close()


@needs_etcd
@pytest.mark.etcd
async def test_guarded_create_applies_only_while_the_guard_is_unchanged(etcd: LocalEtcd) -> None:
    store = EtcdStore([etcd.endpoint], prefix="/p", compaction_interval=0)
    try:
        assert isinstance(store, GuardedCreate)
        ns = await store.create("/registry/namespaces/team", b"active")
        created = await store.create_guarded("/registry/configmaps/team/a", b"x", ns.key, ns.revision)
        assert await store.get("/registry/configmaps/team/a") == created
        with pytest.raises(KeyExistsError):
            await store.create_guarded("/registry/configmaps/team/a", b"y", ns.key, ns.revision)

        changed = await store.update(ns.key, b"terminating", ns.revision)
        with pytest.raises(ConflictError) as stale:
            await store.create_guarded("/registry/configmaps/team/b", b"x", ns.key, ns.revision)
        assert (stale.value.key, stale.value.expected, stale.value.actual) == (ns.key, ns.revision, changed.revision)
        await store.delete(ns.key)
        with pytest.raises(ConflictError) as gone:
            await store.create_guarded("/registry/configmaps/team/b", b"x", ns.key, changed.revision)
        assert gone.value.actual == 0
        assert await store.count("/registry/configmaps/") == 1  # neither refused create wrote anything
    finally:
        await store.close()


@needs_etcd
@pytest.mark.etcd
async def test_compaction_rounds_compact_to_the_revision_seen_one_interval_ago(etcd: LocalEtcd) -> None:
    # Two API servers on one cluster: each runs the compactor; the shared clock makes only one compact per round.
    one = EtcdStore([etcd.endpoint], compaction_interval=0)
    two = EtcdStore([etcd.endpoint], compaction_interval=0)
    try:
        first = await one.create("/registry/pods/default/a", b"1")
        clock, seen = await one.compaction_round(0, 0)  # bootstrap: remembers the revision, compacts nothing
        assert clock == 1
        await one.list("/registry/pods/", revision=first.revision)  # still readable

        later = await one.update("/registry/pods/default/a", b"2", first.revision)
        other_clock, _ = await two.compaction_round(0, 0)  # stale clock: learns the clock, does not compact
        assert other_clock == 1
        clock, _ = await one.compaction_round(clock, seen)  # compacts etcd at the revision seen last round
        assert clock == 2
        with pytest.raises(ExpiredError):
            await one.list("/registry/pods/", revision=first.revision)
        assert (await one.list("/registry/pods/", revision=later.revision)).items[0].value == b"2"
    finally:
        await one.close()
        await two.close()


@needs_etcd
@pytest.mark.etcd
async def test_periodic_compaction_runs_in_the_background(etcd: LocalEtcd) -> None:
    store = EtcdStore([etcd.endpoint], compaction_interval=0.1)
    try:
        first = await store.create("/registry/pods/default/a", b"1")
        await store.update("/registry/pods/default/a", b"2", first.revision)

        async def first_revision_compacted() -> bool:
            try:
                await store.list("/registry/pods/", revision=first.revision)
            except ExpiredError:
                return True
            return False

        await wait_until(first_revision_compacted, timeout=5, what="the compactor to compact the first revision")
    finally:
        await store.close()


@needs_etcd
@pytest.mark.etcd
async def test_watch_from_now_outlives_compaction_of_the_last_revision_this_store_saw(etcd: LocalEtcd) -> None:
    # "From now" starts after the newest revision this store has seen; when another API server has written and
    # compacted past it meanwhile, the watch starts at the oldest revision etcd keeps instead of failing with
    # ExpiredError, and still sees every write made after the watch() call.
    idle = EtcdStore([etcd.endpoint], compaction_interval=0)
    busy = EtcdStore([etcd.endpoint], compaction_interval=0)
    try:
        await idle.create("/registry/pods/default/a", b"1")
        for i in range(3):
            await busy.create(f"/registry/pods/default/b{i}", b"1")
        await busy.compact(await busy.current_revision())
        watch = idle.watch("/registry/pods/")
        pending = asyncio.ensure_future(asyncio.wait_for(anext(watch), 5))
        later = await busy.create("/registry/pods/default/c", b"1")
        event = await pending
        assert (event.key, event.revision) == (later.key, later.revision)
        await watch.aclose()
    finally:
        await idle.close()
        await busy.close()


def write_test_pki(directory: Path) -> EtcdTLS:
    """A CA and one certificate it signed for 127.0.0.1, usable as server and as client certificate."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ccmkit-test-ca")])

    def certificate(subject: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - day)
            .not_valid_after(now + day)
        )

    ca = (
        certificate(ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), key.public_key())
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    (directory / "ca.crt").write_bytes(ca.public_bytes(pem))
    (directory / "tls.crt").write_bytes(cert.public_bytes(pem))
    (directory / "tls.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return EtcdTLS(str(directory / "ca.crt"), str(directory / "tls.crt"), str(directory / "tls.key"))


@needs_etcd
@pytest.mark.etcd
async def test_mutual_tls(tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    tls = write_test_pki(tmp_path / "pki")
    member = LocalEtcd(tmp_path / "etcd", tls=tls)
    await member.start()
    try:
        assert member.endpoint.startswith("https://")
        files = {"ca_file": tls.ca_file, "cert_file": tls.cert_file, "key_file": tls.key_file}
        store = EtcdStore([member.endpoint], compaction_interval=0, **files)
        from_url = EtcdStore.from_url(
            f"etcd://127.0.0.1:{member.client_port}/?ca={tls.ca_file}&cert={tls.cert_file}&key={tls.key_file}"
        )
        # Without a client certificate the member refuses the handshake.
        anonymous = EtcdStore([member.endpoint], ca_file=tls.ca_file, timeout=0.5, compaction_interval=0)
        try:
            watch = store.watch("/registry/pods/")  # a streaming call over TLS, as the watch cache makes
            created = await store.create("/registry/pods/default/a", b"x")
            assert await from_url.get("/registry/pods/default/a") == created
            event = await asyncio.wait_for(anext(watch), 5)
            assert (event.type, event.key, event.revision) == ("ADDED", "/registry/pods/default/a", created.revision)
            await watch.aclose()
            with pytest.raises(UnavailableError):
                await anonymous.get("/registry/pods/default/a")
        finally:
            for s in (store, from_url, anonymous):
                await s.close()
    finally:
        await member.stop()


def test_store_url_carries_endpoints_prefix_and_options() -> None:
    store = EtcdStore.from_url("etcd://127.0.0.1:2379,127.0.0.1:22379/ccm?timeout=3&compaction_interval=60")
    assert store.endpoints == ["127.0.0.1:2379", "127.0.0.1:22379"]
    assert store._prefix == b"/ccm" and store._timeout == 3 and store._compaction_interval == 60
    assert EtcdStore.from_url("etcd").endpoints == ["127.0.0.1:2379"]
