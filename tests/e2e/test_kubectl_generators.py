"""kubectl's typed generators (`kubectl create deployment|service|job|...`) against ccmkit's API server.

These commands send their request bodies as protobuf (`application/vnd.kubernetes.protobuf`), not JSON, so each
test here proves that one generator's body decodes into the object a user asked for: it runs the command with the
real kubectl on PATH, reads the object back as JSON and checks the fields the flags set.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from controlplane.testing import ThreadedApiServer

pytestmark = pytest.mark.kubectl


def get(kubectl: Any, *args: str) -> dict[str, Any]:
    return json.loads(kubectl("get", *args, "-o", "json"))


def test_create_configmap(kubectl: Any, tmp_path: Path) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\x00\xff\xfe binary")
    kubectl("create", "configmap", "settings", "--from-literal=mode=fast", "--from-literal=level=3",
            f"--from-file=blob={blob}")
    cm = get(kubectl, "configmap", "settings")
    assert cm["data"] == {"mode": "fast", "level": "3"}
    # Non-UTF-8 file content travels as protobuf bytes and must come back as base64 in binaryData.
    assert base64.b64decode(cm["binaryData"]["blob"]) == b"\x00\xff\xfe binary"


def test_create_secret_generic(kubectl: Any) -> None:
    kubectl("create", "secret", "generic", "creds", "--from-literal=user=admin", "--from-literal=password=s3cr3t")
    secret = get(kubectl, "secret", "creds")
    assert secret["type"] == "Opaque"
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == {
        "user": "admin", "password": "s3cr3t"}


def test_create_secret_docker_registry(kubectl: Any) -> None:
    kubectl("create", "secret", "docker-registry", "regcred", "--docker-server=registry.example",
            "--docker-username=u", "--docker-password=p")
    secret = get(kubectl, "secret", "regcred")
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    config = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
    assert config["auths"]["registry.example"]["username"] == "u"


def test_create_secret_tls(kubectl: Any, tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "example.test")])
    now = _dt.datetime.now(_dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + _dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "tls.crt").write_bytes(cert_pem)
    (tmp_path / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    kubectl("create", "secret", "tls", "site", f"--cert={tmp_path / 'tls.crt'}", f"--key={tmp_path / 'tls.key'}")
    secret = get(kubectl, "secret", "site")
    assert secret["type"] == "kubernetes.io/tls"
    assert base64.b64decode(secret["data"]["tls.crt"]) == cert_pem


def test_create_deployment(kubectl: Any) -> None:
    kubectl("create", "deployment", "web", "--image=nginx", "--replicas=2", "--port=80")
    deploy = get(kubectl, "deployment", "web")
    assert deploy["metadata"]["labels"] == {"app": "web"}
    assert deploy["spec"]["replicas"] == 2
    assert deploy["spec"]["selector"] == {"matchLabels": {"app": "web"}}
    template = deploy["spec"]["template"]
    assert template["metadata"]["labels"] == {"app": "web"}
    [container] = template["spec"]["containers"]
    assert container["name"] == "nginx"
    assert container["image"] == "nginx"
    assert container["ports"] == [{"containerPort": 80, "protocol": "TCP"}]
    # Go's marshaller writes every non-pointer field, so false and empty values arrive; like encoding/json, the
    # stored object must not show them.
    assert "stdin" not in container and "tty" not in container and "workingDir" not in container


def test_create_deployment_with_command(kubectl: Any) -> None:
    kubectl("create", "deployment", "sleeper", "--image=busybox", "--", "sleep", "3600")
    [container] = get(kubectl, "deployment", "sleeper")["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["sleep", "3600"]
    assert container["name"] == "busybox"


def test_create_service_clusterip(kubectl: Any) -> None:
    kubectl("create", "service", "clusterip", "api", "--tcp=80:8080", "--tcp=443")
    svc = get(kubectl, "service", "api")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"] == {"app": "api"}
    assert [(p["name"], p["port"], p["targetPort"], p["protocol"]) for p in svc["spec"]["ports"]] == [
        ("80-8080", 80, 8080, "TCP"), ("443", 443, 443, "TCP")]
    assert svc["spec"]["clusterIP"] not in ("", "None")


def test_create_service_clusterip_headless(kubectl: Any) -> None:
    kubectl("create", "service", "clusterip", "db", "--clusterip=None")
    assert get(kubectl, "service", "db")["spec"]["clusterIP"] == "None"


def test_create_service_nodeport(kubectl: Any) -> None:
    kubectl("create", "service", "nodeport", "np", "--tcp=80:8080", "--node-port=30080")
    svc = get(kubectl, "service", "np")
    assert svc["spec"]["type"] == "NodePort"
    [port] = svc["spec"]["ports"]
    assert (port["port"], port["targetPort"], port["nodePort"]) == (80, 8080, 30080)


def test_create_service_loadbalancer(kubectl: Any) -> None:
    kubectl("create", "service", "loadbalancer", "lb", "--tcp=80:8080")
    svc = get(kubectl, "service", "lb")
    assert svc["spec"]["type"] == "LoadBalancer"
    [port] = svc["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (80, 8080)
    # Zero nodePort in the protobuf body means "allocate one", as it does in JSON.
    assert 30000 <= port["nodePort"] <= 32767


def test_create_service_externalname(kubectl: Any) -> None:
    kubectl("create", "service", "externalname", "ext", "--external-name=example.com")
    svc = get(kubectl, "service", "ext")
    assert (svc["spec"]["type"], svc["spec"]["externalName"]) == ("ExternalName", "example.com")


def test_create_namespace(kubectl: Any) -> None:
    kubectl("create", "namespace", "team-a")
    ns = get(kubectl, "namespace", "team-a")
    assert ns["metadata"]["name"] == "team-a"
    assert ns["status"]["phase"] == "Active"


def test_create_job(kubectl: Any) -> None:
    kubectl("create", "job", "once", "--image=busybox", "--", "echo", "hi")
    job = get(kubectl, "job", "once")
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    [container] = spec["containers"]
    assert (container["name"], container["image"], container["command"]) == ("once", "busybox", ["echo", "hi"])


RICH_CRONJOB = """
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: "0 0 * * *"
  jobTemplate:
    spec:
      backoffLimit: 0
      template:
        metadata: {labels: {tier: batch}}
        spec:
          restartPolicy: Never
          terminationGracePeriodSeconds: 0
          nodeSelector: {disk: ssd}
          tolerations: [{key: k, operator: Exists, effect: NoSchedule, tolerationSeconds: 30}]
          securityContext: {runAsUser: 1000, fsGroup: 2000}
          volumes:
          - {name: scratch, emptyDir: {sizeLimit: 64Mi}}
          - {name: cfg, configMap: {name: cm1, defaultMode: 420, items: [{key: a, path: a.txt}]}}
          - {name: sec, secret: {secretName: s1, optional: true}}
          - {name: data, persistentVolumeClaim: {claimName: data}}
          - {name: host, hostPath: {path: /var/log, type: Directory}}
          initContainers:
          - {name: init, image: busybox, command: ["true"]}
          containers:
          - name: main
            image: busybox
            command: [sh, -c]
            args: ["echo $A"]
            workingDir: /tmp
            env:
            - {name: A, value: x}
            - {name: B, valueFrom: {configMapKeyRef: {name: cm1, key: a}}}
            - {name: C, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
            - {name: D, valueFrom: {secretKeyRef: {name: s1, key: u, optional: true}}}
            envFrom: [{prefix: P_, secretRef: {name: s1}}, {configMapRef: {name: cm1}}]
            resources: {limits: {cpu: 500m, memory: 128Mi}, requests: {cpu: 100m}}
            ports: [{name: http, containerPort: 8080, protocol: TCP}]
            volumeMounts: [{name: scratch, mountPath: /scratch}, {name: cfg, mountPath: /cfg, readOnly: true}]
            livenessProbe: {httpGet: {path: /healthz, port: http}, initialDelaySeconds: 3, periodSeconds: 5}
            readinessProbe: {tcpSocket: {port: 8080}, failureThreshold: 1}
            startupProbe: {exec: {command: ["true"]}}
            securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
            imagePullPolicy: IfNotPresent
            stdin: true
            tty: true
"""


def test_create_job_from_cronjob_keeps_the_whole_pod_template(kubectl: Any) -> None:
    """`kubectl create job --from=cronjob/...` reads the CronJob as JSON and posts the Job as protobuf, so a rich
    pod template makes the round trip through every common PodSpec and Container message."""
    kubectl("apply", "-f", "-", input=RICH_CRONJOB)
    kubectl("create", "job", "manual-run", "--from=cronjob/nightly")
    cronjob = get(kubectl, "cronjob", "nightly")
    job = get(kubectl, "job", "manual-run")
    expected = cronjob["spec"]["jobTemplate"]["spec"]["template"]
    got = job["spec"]["template"]
    for label in [k for k in got["metadata"]["labels"] if k != "tier"]:  # the Job's own selector labels
        del got["metadata"]["labels"][label]
    assert got == expected
    assert job["spec"]["backoffLimit"] == 0  # a pointer field set to zero survives
    assert job["metadata"]["annotations"] == {"cronjob.kubernetes.io/instantiate": "manual"}
    [owner] = job["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["controller"], owner["uid"]) == (
        "CronJob", "nightly", True, cronjob["metadata"]["uid"])


def test_create_cronjob(kubectl: Any) -> None:
    kubectl("create", "cronjob", "tick", "--image=busybox", "--schedule=*/5 * * * *", "--restart=OnFailure",
            "--", "date")
    cj = get(kubectl, "cronjob", "tick")
    assert cj["spec"]["schedule"] == "*/5 * * * *"
    assert cj["spec"]["jobTemplate"]["metadata"]["name"] == "tick"
    pod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "OnFailure"
    assert pod["containers"][0]["command"] == ["date"]


def test_create_serviceaccount(kubectl: Any) -> None:
    kubectl("create", "serviceaccount", "robot")
    assert get(kubectl, "serviceaccount", "robot")["metadata"]["name"] == "robot"


def test_create_quota(kubectl: Any) -> None:
    kubectl("create", "quota", "small", "--hard=cpu=1,memory=1G,pods=2", "--scopes=BestEffort")
    quota = get(kubectl, "resourcequota", "small")
    assert quota["spec"]["hard"] == {"cpu": "1", "memory": "1G", "pods": "2"}
    assert quota["spec"]["scopes"] == ["BestEffort"]


def test_create_role(kubectl: Any) -> None:
    kubectl("create", "role", "reader", "--verb=get,list", "--resource=pods,deployments.apps", "--resource-name=x")
    role = get(kubectl, "role", "reader")
    assert role["rules"] == [
        {"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"], "resourceNames": ["x"]},
        {"verbs": ["get", "list"], "apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["x"]},
    ]


def test_create_rolebinding(kubectl: Any) -> None:
    kubectl("create", "rolebinding", "read", "--role=reader", "--user=alice", "--group=devs",
            "--serviceaccount=default:robot")
    binding = get(kubectl, "rolebinding", "read")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"}
    assert binding["subjects"] == [
        {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"},
        {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "devs"},
        {"kind": "ServiceAccount", "name": "robot", "namespace": "default"},
    ]


def test_create_clusterrole(kubectl: Any) -> None:
    kubectl("create", "clusterrole", "node-reader", "--verb=get", "--resource=nodes", "--non-resource-url=/healthz")
    kubectl("create", "clusterrole", "aggregate", "--aggregation-rule=rbac.example/aggregate=true")
    role = get(kubectl, "clusterrole", "node-reader")
    assert role["rules"] == [{"verbs": ["get"], "apiGroups": [""], "resources": ["nodes"]},
                             {"verbs": ["get"], "nonResourceURLs": ["/healthz"]}]
    aggregate = get(kubectl, "clusterrole", "aggregate")
    assert aggregate["aggregationRule"] == {
        "clusterRoleSelectors": [{"matchLabels": {"rbac.example/aggregate": "true"}}]}


def test_create_clusterrolebinding(kubectl: Any) -> None:
    kubectl("create", "clusterrolebinding", "admins", "--clusterrole=cluster-admin", "--user=bob")
    binding = get(kubectl, "clusterrolebinding", "admins")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "cluster-admin"}
    assert binding["subjects"] == [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "bob"}]


def test_create_priorityclass(kubectl: Any) -> None:
    kubectl("create", "priorityclass", "high", "--value=1000", "--description=important", "--preemption-policy=Never")
    kubectl("create", "priorityclass", "low", "--value=-5", "--global-default=true")
    high = get(kubectl, "priorityclass", "high")
    assert (high["value"], high["description"], high["preemptionPolicy"]) == (1000, "important", "Never")
    assert "globalDefault" not in high or high["globalDefault"] is False
    low = get(kubectl, "priorityclass", "low")
    # A negative int32 arrives as a ten-byte two's-complement varint.
    assert (low["value"], low["globalDefault"]) == (-5, True)


def test_create_poddisruptionbudget(kubectl: Any) -> None:
    kubectl("create", "poddisruptionbudget", "min", "--selector=app=web", "--min-available=1")
    kubectl("create", "poddisruptionbudget", "max", "--selector=app=web", "--max-unavailable=50%")
    pdb_min = get(kubectl, "poddisruptionbudget", "min")
    assert pdb_min["spec"]["minAvailable"] == 1  # IntOrString as an int
    assert pdb_min["spec"]["selector"] == {"matchLabels": {"app": "web"}}
    assert "maxUnavailable" not in pdb_min["spec"]
    assert get(kubectl, "poddisruptionbudget", "max")["spec"]["maxUnavailable"] == "50%"  # and as a string


def test_create_ingress(kubectl: Any) -> None:
    kubectl("create", "ingress", "site", "--class=nginx", "--rule=foo.com/bar*=svc1:8080,tls=my-cert",
            "--default-backend=svc1:80")
    spec = get(kubectl, "ingress", "site")["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["defaultBackend"] == {"service": {"name": "svc1", "port": {"number": 80}}}
    assert spec["tls"] == [{"hosts": ["foo.com"], "secretName": "my-cert"}]
    assert spec["rules"] == [{"host": "foo.com", "http": {"paths": [
        {"path": "/bar", "pathType": "Prefix", "backend": {"service": {"name": "svc1", "port": {"number": 8080}}}}]}}]


def test_expose_deployment(kubectl: Any) -> None:
    kubectl("create", "deployment", "site", "--image=nginx", "--port=80")
    kubectl("expose", "deployment", "site", "--port=80", "--target-port=8080", "--type=NodePort")
    svc = get(kubectl, "service", "site")
    assert svc["spec"]["selector"] == {"app": "site"}
    [port] = svc["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (80, 8080)


def test_autoscale_deployment(kubectl: Any) -> None:
    kubectl("create", "deployment", "scaled", "--image=nginx")
    proc = kubectl.run("autoscale", "deployment", "scaled", "--min=1", "--max=5", "--cpu-percent=70", check=False)
    assert proc.returncode == 0, proc.stderr  # an autoscaling/v1 body, stored as v2
    hpa = get(kubectl, "hpa", "scaled")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 5)
    assert hpa["spec"]["scaleTargetRef"]["name"] == "scaled"


def test_create_token(kubectl: Any) -> None:
    kubectl("create", "serviceaccount", "builder")
    token = kubectl("create", "token", "builder", "--duration=1h", "--audience=api")
    assert token.count(".") == 2  # a JWT; its claims and signature: test_service_account_tokens.py


PROTOBUF = "application/vnd.kubernetes.protobuf"


def _envelope(api_version: bytes, kind: bytes, raw: bytes) -> bytes:
    type_meta = b"\x0a" + bytes([len(api_version)]) + api_version + b"\x12" + bytes([len(kind)]) + kind
    return b"k8s\x00" + b"\x0a" + bytes([len(type_meta)]) + type_meta + b"\x12" + bytes([len(raw)]) + raw


def test_protobuf_body_of_an_unknown_kind_is_415_naming_it(apiserver: ThreadedApiServer) -> None:
    body = _envelope(b"v1", b"Gizmo", b"")
    resp = httpx.post(f"{apiserver.url}/api/v1/namespaces/default/configmaps", content=body,
                      headers={"Content-Type": PROTOBUF})
    assert resp.status_code == 415
    assert resp.json()["reason"] == "UnsupportedMediaType"
    assert "Gizmo" in resp.json()["message"]


def test_malformed_protobuf_body_is_400(apiserver: ThreadedApiServer) -> None:
    resp = httpx.post(f"{apiserver.url}/api/v1/namespaces/default/configmaps", content=b"not protobuf at all",
                      headers={"Content-Type": PROTOBUF})
    assert resp.status_code == 400
    assert "protobuf" in resp.json()["message"]
