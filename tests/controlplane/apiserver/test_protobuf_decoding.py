"""The protobuf request-body decoder, on bodies the real kubectl (v1.32) sent and on hand-built edge cases.

The captured bodies were recorded once from `kubectl create ...` against a ccmkit server; each decodes to the object
kubectl itself prints with `--dry-run=client -o json` (less its `creationTimestamp: null`).
"""

from __future__ import annotations

import logging

import pytest

from controlplane.apiserver import protobuf
from controlplane.apiserver.protobuf import MalformedProtobuf, UnsupportedProtobuf

# kubectl create deployment web --image=nginx --replicas=2 --port=80
# kubectl create service nodeport np1 --tcp=80:8080 --node-port=30080
# kubectl create secret generic s1 --from-literal=u=p --type=Opaque
# kubectl create poddisruptionbudget pdb2 --selector=app=web --max-unavailable=50%
# kubectl create priorityclass neg --value=-5
# kubectl create job fromrich --from=cronjob/rich   (a CronJob with a rich pod template, see test_kubectl_generators)

DEPLOYMENT = (
    b'k8s\x00\n\x15\n\x07apps/v1\x12\nDeployment\x12\xb8\x01\n\x1f\n\x03web\x12\x00\x1a\x00"\x00*\x002\x008\x00'
    b'B\x00Z\n\n\x03app\x12\x03web\x12\x86\x01\x08\x02\x12\x0c\n\n\n\x03app\x12\x03web\x1al\n\x1c\n\x00\x12\x00'
    b'\x1a\x00"\x00*\x002\x008\x00B\x00Z\n\n\x03app\x12\x03web\x12L\x12.\n\x05nginx\x12\x05nginx*\x002\n\n\x00'
    b'\x10\x00\x18P"\x00*\x00B\x00j\x00r\x00\x80\x01\x00\x88\x01\x00\x90\x01\x00\xa2\x01\x00\x1a\x002\x00B\x00J'
    b'\x00R\x00X\x00`\x00h\x00\x82\x01\x00\x8a\x01\x00\x9a\x01\x00\xc2\x01\x00"\x02\n\x00(\x008\x00\x1a\x0c\x08'
    b'\x00\x10\x00\x18\x00 \x00(\x008\x00\x1a\x00"\x00'
)

SERVICE_NODEPORT = (
    b'k8s\x00\n\r\n\x02v1\x12\x07Service\x12j\n\x1f\n\x03np1\x12\x00\x1a\x00"\x00*\x002\x008\x00B\x00Z\n\n\x03a'
    b'pp\x12\x03np1\x12C\n\x1d\n\x0780-8080\x12\x03TCP\x18P"\x07\x08\x00\x10\x90?\x1a\x00(\x80\xeb\x01\x12\n\n'
    b'\x03app\x12\x03np1\x1a\x00"\x08NodePort:\x00B\x00R\x00Z\x00`\x00h\x00\x1a\x02\n\x00\x1a\x00"\x00'
)

SECRET = (
    b'k8s\x00\n\x0c\n\x02v1\x12\x06Secret\x12$\n\x12\n\x02s1\x12\x00\x1a\x00"\x00*\x002\x008\x00B\x00\x12\x06\n'
    b'\x01u\x12\x01p\x1a\x06Opaque\x1a\x00"\x00'
)

PDB_PERCENT = (
    b'k8s\x00\n \n\tpolicy/v1\x12\x13PodDisruptionBudget\x12=\n\x14\n\x04pdb2\x12\x00\x1a\x00"\x00*\x002\x008'
    b'\x00B\x00\x12\x19\x12\x0c\n\n\n\x03app\x12\x03web\x1a\t\x08\x01\x10\x00\x1a\x0350%\x1a\n\x08\x00\x18\x00 '
    b'\x00(\x000\x00\x1a\x00"\x00'
)

PRIORITY_NEGATIVE = (
    b'k8s\x00\n%\n\x14scheduling.k8s.io/v1\x12\rPriorityClass\x12:\n\x13\n\x03neg\x12\x00\x1a\x00"\x00*\x002'
    b'\x008\x00B\x00\x10\xfb\xff\xff\xff\xff\xff\xff\xff\xff\x01\x18\x00"\x00*\x14PreemptLowerPriority\x1a\x00"'
    b'\x00'
)

JOB_FROM_CRONJOB = (
    b'k8s\x00\n\x0f\n\x08batch/v1\x12\x03Job\x12\x95\x06\n\x88\x01\n\x08fromrich\x12\x00\x1a\x00"\x00*\x002\x00'
    b'8\x00B\x00b+\n!cronjob.kubernetes.io/instantiate\x12\x06manualjA\n\x07CronJob\x1a\x04rich"$472f4b4c-084b-'
    b'44d0-a3e6-d96ceafa69ea*\x08batch/v10\x01\x12\xfd\x042\xf8\x04\n\x1f\n\x00\x12\x00\x1a\x00"\x00*\x002\x008'
    b'\x00B\x00Z\r\n\x04tier\x12\x05batch\x12\xd4\x04\n\x17\n\x07scratch\x12\x0c\x12\n\n\x00\x12\x06\n\x0464Mi'
    b'\n \n\x03cfg\x12\x19\x9a\x01\x16\n\x05\n\x03cm1\x12\n\n\x01a\x12\x05a.txt\x18\xa4\x03\n\x12\n\x03sec\x12'
    b'\x0b2\t\n\x02s1\x18\xa4\x03 \x01\x12\x8f\x03\n\x04main\x12\x07busybox\x1a\x02sh\x1a\x02-c"\x07echo $A*'
    b'\x04/tmp2\x12\n\x04http\x10\x00\x18\x90?"\x03TCP*\x00:\x06\n\x01A\x12\x01x:\x13\n\x01B\x12\x00\x1a\x0c'
    b'\x1a\n\n\x05\n\x03cm1\x12\x01a:\x1a\n\x01C\x12\x00\x1a\x13\n\x11\n\x00\x12\rmetadata.nameBD\n\r\n\x03cpu'
    b'\x12\x06\n\x04500m\n\x11\n\x06memory\x12\x07\n\x05128Mi\x12\r\n\x03cpu\x12\x06\n\x04100m\x12\x11\n\x06mem'
    b'ory\x12\x07\n\x05128MiJ\x19\n\x07scratch\x10\x00\x1a\x08/scratch"\x002\x00J\x11\n\x03cfg\x10\x01\x1a\x04/'
    b'cfg"\x002\x00R,\n \x12\x1e\n\x08/healthz\x12\n\x08\x01\x10\x00\x1a\x04http\x1a\x00"\x04HTTP\x10\x03\x18'
    b'\x01 \x05(\x010\x03Z\x19\n\r\x1a\x0b\n\x07\x08\x00\x10\x90?\x1a\x00\x12\x00\x10\x00\x18\x01 \n(\x010\x01j'
    b'\x14/dev/termination-logr\x06Alwaysz\t\n\x05\x12\x03ALL8\x00\x80\x01\x01\x88\x01\x00\x90\x01\x01\x9a\x01'
    b'\x0c\n\x02P_\x1a\x06\n\x04\n\x02s1\xa2\x01\x04File\xb2\x01\x14\n\x08\n\x06\n\x04true\x10\x00\x18\x01 \n('
    b'\x010\x03\x1a\x05Never \x002\x0cClusterFirst:\x0b\n\x04disk\x12\x03ssdB\x00J\x00R\x00X\x00`\x00h\x00r\x06'
    b'\x10\xe8\x07(\xd0\x0f\x82\x01\x00\x8a\x01\x00\x9a\x01\x11default-scheduler\xb2\x01\x1b\n\x01k\x12\x06Exis'
    b'ts\x1a\x00"\nNoSchedule(\x1e\xc2\x01\x008\x00\x1a\x08 \x00(\x000\x00:\x00\x1a\x00"\x00'
)


# ------------------------------------------------------------------------ a tiny encoder for hand-built messages

def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negatives as 64-bit two's complement, as Go writes int32 and int64
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def vfield(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def lfield(number: int, value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(data)) + data


def envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    return b"k8s\x00" + lfield(1, lfield(1, api_version) + lfield(2, kind)) + lfield(2, raw) + lfield(3, b"")


# ------------------------------------------------------------------------------------------- captured bodies

def test_deployment_from_kubectl_create() -> None:
    assert protobuf.decode_object(DEPLOYMENT) == {
        "kind": "Deployment", "apiVersion": "apps/v1",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                # stdin/tty false, workingDir "" and the like were all on the wire: dropped as omitempty.
                "spec": {"containers": [{"name": "nginx", "image": "nginx", "ports": [{"containerPort": 80}],
                                         "resources": {}}]},
            },
            "strategy": {},
        },
        # Every DeploymentStatus counter came as 0; all are omitempty in Go, so none shows.
        "status": {},
    }


def test_service_ports_and_int_or_string() -> None:
    svc = protobuf.decode_object(SERVICE_NODEPORT)
    assert svc["spec"] == {
        "ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30080}],
        "selector": {"app": "np1"},
        "type": "NodePort",
    }
    assert svc["status"] == {"loadBalancer": {}}  # an empty nested message that was present stays as {}


def test_secret_bytes_map_is_base64() -> None:
    assert protobuf.decode_object(SECRET) == {
        "kind": "Secret", "apiVersion": "v1", "metadata": {"name": "s1"}, "data": {"u": "cA=="}, "type": "Opaque"}


def test_pdb_int_or_string_as_string_and_non_omitempty_zeros_kept() -> None:
    pdb = protobuf.decode_object(PDB_PERCENT)
    assert pdb["spec"] == {"selector": {"matchLabels": {"app": "web"}}, "maxUnavailable": "50%"}
    # These status counters have no omitempty in Go, so encoding/json writes their zeros too.
    assert pdb["status"] == {"disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0}


def test_negative_int32_from_kubectl() -> None:
    pc = protobuf.decode_object(PRIORITY_NEGATIVE)
    assert pc["value"] == -5
    assert "globalDefault" not in pc  # false, omitempty
    assert pc["preemptionPolicy"] == "PreemptLowerPriority"


def test_rich_pod_template() -> None:
    job = protobuf.decode_object(JOB_FROM_CRONJOB)
    assert job["metadata"]["ownerReferences"] == [{
        "apiVersion": "batch/v1", "kind": "CronJob", "name": "rich",
        "uid": "472f4b4c-084b-44d0-a3e6-d96ceafa69ea", "controller": True}]
    assert job["spec"]["backoffLimit"] == 0  # a pointer set to zero is kept
    pod = job["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 0
    assert pod["nodeSelector"] == {"disk": "ssd"}
    assert pod["securityContext"] == {"runAsUser": 1000, "fsGroup": 2000}
    assert pod["tolerations"] == [{"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 30}]
    # Volume embeds VolumeSource inline, and ConfigMapVolumeSource embeds LocalObjectReference inline.
    assert pod["volumes"] == [
        {"name": "scratch", "emptyDir": {"sizeLimit": "64Mi"}},
        {"name": "cfg", "configMap": {"name": "cm1", "items": [{"key": "a", "path": "a.txt"}], "defaultMode": 420}},
        {"name": "sec", "secret": {"secretName": "s1", "defaultMode": 420, "optional": True}},
    ]
    [c] = pod["containers"]
    assert c["env"] == [
        {"name": "A", "value": "x"},
        {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "cm1", "key": "a"}}},
        {"name": "C", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    assert c["envFrom"] == [{"prefix": "P_", "secretRef": {"name": "s1"}}]
    assert c["resources"] == {"limits": {"cpu": "500m", "memory": "128Mi"},
                              "requests": {"cpu": "100m", "memory": "128Mi"}}
    # Probe embeds ProbeHandler inline; a named port is an IntOrString string.
    assert c["livenessProbe"] == {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
                                  "initialDelaySeconds": 3, "timeoutSeconds": 1, "periodSeconds": 5,
                                  "successThreshold": 1, "failureThreshold": 3}
    assert c["readinessProbe"]["tcpSocket"] == {"port": 8080}
    assert c["startupProbe"]["exec"] == {"command": ["true"]}
    assert c["volumeMounts"] == [{"name": "scratch", "mountPath": "/scratch"},
                                 {"name": "cfg", "readOnly": True, "mountPath": "/cfg"}]
    assert c["securityContext"] == {"capabilities": {"drop": ["ALL"]}, "allowPrivilegeEscalation": False}
    assert (c["stdin"], c["tty"]) == (True, True)
    assert "stdinOnce" not in c


# -------------------------------------------------------------------------------------------- wire primitives

@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**31 - 1, 2**63 - 1, -1, -5, -(2**31), -(2**63)])
def test_varint_round_trip_including_negative_int64(value: int) -> None:
    encoded = varint(value)
    decoded, end = protobuf.read_varint(encoded, 0)
    assert end == len(encoded)
    assert protobuf.signed64(decoded) == value
    if value < 0:
        assert len(encoded) == 10  # two's complement, not zigzag


def test_negative_int64_field() -> None:
    opts = protobuf.decode_object(envelope("v1", "DeleteOptions", vfield(1, -1) + lfield(4, "Foreground")))
    assert opts == {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": -1,
                    "propagationPolicy": "Foreground"}


def test_truncated_varint_and_length_are_malformed() -> None:
    with pytest.raises(MalformedProtobuf):
        protobuf.read_varint(b"\x80\x80", 0)
    with pytest.raises(MalformedProtobuf):
        list(protobuf.iter_fields(b"\x0a\x05abc"))


def test_repeated_and_packed_repeated_numbers() -> None:
    context = vfield(4, 1) + vfield(4, 2) + lfield(4, varint(3) + varint(-4))  # unpacked, then a packed run
    spec = lfield(14, context) + lfield(2, lfield(1, "c") + lfield(2, "img"))
    pod = protobuf.decode_object(envelope("v1", "Pod", lfield(2, spec)))
    assert pod["spec"]["securityContext"] == {"supplementalGroups": [1, 2, 3, -4]}
    assert pod["spec"]["containers"] == [{"name": "c", "image": "img"}]


def test_map_entries_and_repeated_strings() -> None:
    meta = (lfield(1, "x") + lfield(11, lfield(1, "a") + lfield(2, "1")) + lfield(11, lfield(1, "b"))
            + lfield(14, "f1") + lfield(14, "f2"))
    binary = lfield(3, lfield(1, "k") + lfield(2, b"\xff"))
    cm = protobuf.decode_object(envelope("v1", "ConfigMap", lfield(1, meta) + binary))
    # An entry without a value is the value type's zero: "" for a string.
    assert cm["metadata"] == {"name": "x", "labels": {"a": "1", "b": ""}, "finalizers": ["f1", "f2"]}
    assert cm["binaryData"] == {"k": "/w=="}


def test_unknown_fields_are_skipped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    meta = lfield(1, "x") + vfield(99, 7) + lfield(98, b"\x01\x02") + varint(97 << 3 | 5) + b"\x00\x00\x00\x00"
    raw = lfield(1, meta) + varint(50 << 3 | 1) + b"\x00" * 8 + lfield(2, lfield(1, "k") + lfield(2, "v"))
    with caplog.at_level(logging.DEBUG, logger="controlplane.apiserver.protobuf"):
        cm = protobuf.decode_object(envelope("v1", "ConfigMap", raw))
    assert cm == {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "x"}, "data": {"k": "v"}}
    assert "unknown field 99 of ConfigMap.metadata" in caplog.text
    assert "unknown field 50 of ConfigMap" in caplog.text


def test_repeated_occurrences_of_a_message_field_merge() -> None:
    # proto's rule: a singular message seen twice is the merge of both; a scalar seen twice keeps the last.
    raw = lfield(1, lfield(1, "first") + lfield(3, "ns")) + lfield(1, lfield(1, "second"))
    cm = protobuf.decode_object(envelope("v1", "ConfigMap", raw))
    assert cm["metadata"] == {"name": "second", "namespace": "ns"}


def test_time_is_rfc3339_and_zero_time_is_omitted() -> None:
    # creationTimestamp (8) is the empty message kubectl sends for Go's zero time; deletionTimestamp (9) is set.
    meta = lfield(1, "x") + lfield(8, b"") + lfield(9, vfield(1, 1_700_000_000) + vfield(2, 5))
    cm = protobuf.decode_object(envelope("v1", "ConfigMap", lfield(1, meta)))
    assert cm["metadata"] == {"name": "x", "deletionTimestamp": "2023-11-14T22:13:20Z"}
    assert protobuf.decode_message("MicroTime", vfield(1, 1_700_000_000) + vfield(2, 123_456_789)) == (
        "2023-11-14T22:13:20.123456Z")
    assert protobuf.decode_message("Time", b"") is None


def test_bools_and_pointer_zeros() -> None:
    spec = vfield(1, 0) + vfield(7, 0) + vfield(5, 0)  # replicas=0 (pointer), paused=false, minReadySeconds=0
    deploy = protobuf.decode_object(envelope("apps/v1", "Deployment", lfield(2, spec)))
    assert deploy["spec"] == {"replicas": 0}


def test_field_known_upstream_but_not_decoded_is_unsupported() -> None:
    volume = lfield(1, "disk") + lfield(2, lfield(4, lfield(1, "vol-1")))  # awsElasticBlockStore
    spec = lfield(1, volume)
    with pytest.raises(UnsupportedProtobuf, match="awsElasticBlockStore"):
        protobuf.decode_object(envelope("v1", "Pod", lfield(2, spec)))


def test_unknown_kind_is_unsupported_naming_it() -> None:
    with pytest.raises(UnsupportedProtobuf, match="Gizmo"):
        protobuf.decode_object(envelope("example.com/v1", "Gizmo", b""))


def test_missing_magic_and_kind_are_malformed() -> None:
    with pytest.raises(MalformedProtobuf, match="expected prefix"):
        protobuf.decode_object(b'{"kind": "ConfigMap"}')
    with pytest.raises(MalformedProtobuf, match="Kind"):
        protobuf.decode_object(b"k8s\x00" + lfield(2, b""))


def test_wrong_wire_type_is_malformed() -> None:
    with pytest.raises(MalformedProtobuf, match="metadata.name"):
        protobuf.decode_object(envelope("v1", "ConfigMap", lfield(1, vfield(1, 5))))


def test_every_kind_has_a_table_for_every_message_it_reaches() -> None:
    tables = protobuf._MESSAGES
    special = set(protobuf._SPECIAL)
    missing = set()
    for name, table in tables.items():
        for _, spec in table.values():
            if spec is None:
                continue
            base = spec[2:] if spec[:2] in ("[]", "{}") else spec
            if base not in protobuf._SCALARS and base not in tables and base not in special:
                missing.add(f"{name} -> {base}")
    assert not missing
    assert all(root in tables for root in protobuf._KINDS.values())
