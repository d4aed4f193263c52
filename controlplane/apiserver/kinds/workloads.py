"""The workload kinds (apps/v1, batch/v1, autoscaling/v2): defaults, selector rules, scale and table columns.

Their spec is a pod template plus rollout knobs; defaults match upstream so controllers and `kubectl rollout` see
the fields they expect, and the template must match the selector, as upstream insists.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

from controlplane.apiserver import jsonutil
from controlplane.apiserver.errors import Cause
from controlplane.apiserver.kinds.base import Column, Strategy, Table, get_path, immutable, path_getter, selector_text
from controlplane.apiserver.kinds.core import default_pod_spec, validate_pod_spec
from controlplane.apiserver.registry import ResourceType, ScaleSpec
from controlplane.apiserver.selectors import LabelSelector
from controlplane.apiserver.validation import required


def _default_template(obj: dict[str, Any], path: str = "spec.template") -> None:
    template = get_path(obj, path)
    if isinstance(template, dict) and isinstance(template.get("spec"), dict):
        default_pod_spec(template["spec"])


def _validate_selector_matches_template(obj: dict[str, Any], template_path: str = "spec.template") -> list[Cause]:
    selector = get_path(obj, "spec.selector")
    if not isinstance(selector, dict) or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        return [Cause("FieldValueRequired", "Required value", "spec.selector")]
    labels = get_path(obj, f"{template_path}.metadata.labels") or {}
    try:
        matches = LabelSelector.from_api(selector).matches(labels)
    except (KeyError, TypeError):
        return [Cause("FieldValueInvalid", "Invalid value: invalid label selector", "spec.selector")]
    if not matches:
        return [Cause("FieldValueInvalid", "Invalid value: map[string]string"
                      f"{labels}: `selector` does not match template `labels`", f"{template_path}.metadata.labels")]
    return []


def _validate_replicas(obj: dict[str, Any]) -> list[Cause]:
    replicas = get_path(obj, "spec.replicas")
    if replicas is not None and (not isinstance(replicas, int) or replicas < 0):
        return [Cause("FieldValueInvalid", f"Invalid value: {replicas}: must be greater than or equal to 0",
                      "spec.replicas")]
    return []


class WorkloadStrategy(Strategy):
    """Shared by Deployment, ReplicaSet, StatefulSet and DaemonSet."""

    def __init__(self, table: Table | None = None, extra_defaults: dict[str, Any] | None = None) -> None:
        super().__init__(track_generation=True, table=table)
        self.extra_defaults = extra_defaults or {}

    def defaults(self, obj: dict[str, Any]) -> None:
        spec = obj.setdefault("spec", {})
        if not isinstance(spec, dict):
            return
        for key, value in self.extra_defaults.items():
            if key not in spec:
                spec[key] = _copy(value)
        _default_template(obj)

    def validate(self, obj: dict[str, Any]) -> list[Cause]:
        causes = _validate_replicas(obj) + _validate_selector_matches_template(obj)
        template = get_path(obj, "spec.template")
        return causes + validate_pod_spec((template or {}).get("spec") if isinstance(template, dict) else None,
                                          "spec.template.spec")

    def validate_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[Cause]:
        return self.validate(new) + immutable(new, old, "spec.selector")


def _copy(value: Any) -> Any:
    return copy.deepcopy(value)


def _ready(obj: dict[str, Any], ready_path: str = "status.readyReplicas") -> str:
    return f"{get_path(obj, ready_path) or 0}/{get_path(obj, 'spec.replicas') or 0}"


def _images(obj: dict[str, Any], template: str = "spec.template") -> list[str]:
    containers = get_path(obj, f"{template}.spec.containers") or []
    return [",".join(c.get("name", "") for c in containers), ",".join(c.get("image", "") for c in containers)]


def _selector_text(obj: dict[str, Any]) -> str:
    return selector_text(get_path(obj, "spec.selector"))


WIDE = [Column("Containers", priority=1), Column("Images", priority=1), Column("Selector", priority=1)]

DEPLOYMENT_TABLE = Table(
    [Column("Ready"), Column("Up-to-date", type="integer"), Column("Available", type="integer"), *WIDE],
    lambda d: [_ready(d), get_path(d, "status.updatedReplicas") or 0, get_path(d, "status.availableReplicas") or 0,
               *_images(d), _selector_text(d)],
)
REPLICASET_TABLE = Table(
    [Column("Desired", type="integer"), Column("Current", type="integer"), Column("Ready", type="integer"), *WIDE],
    lambda r: [get_path(r, "spec.replicas") or 0, get_path(r, "status.replicas") or 0,
               get_path(r, "status.readyReplicas") or 0, *_images(r), _selector_text(r)],
)
STATEFULSET_TABLE = Table(
    [Column("Ready"), Column("Containers", priority=1), Column("Images", priority=1)],
    lambda s: [_ready(s), *_images(s)],
)
DAEMONSET_TABLE = Table(
    [Column("Desired", type="integer"), Column("Current", type="integer"), Column("Ready", type="integer"),
     Column("Up-to-date", type="integer"), Column("Available", type="integer"), Column("Node Selector"), *WIDE],
    lambda d: [get_path(d, "status.desiredNumberScheduled") or 0, get_path(d, "status.currentNumberScheduled") or 0,
               get_path(d, "status.numberReady") or 0, get_path(d, "status.updatedNumberScheduled") or 0,
               get_path(d, "status.numberAvailable") or 0,
               ",".join(f"{k}={v}" for k, v in (get_path(d, "spec.template.spec.nodeSelector") or {}).items())
               or "<none>", *_images(d), _selector_text(d)],
)

# ---------------------------------------------------------------------------------------------------- batch


class JobStrategy(Strategy):
    def __init__(self) -> None:
        super().__init__(track_generation=True, table=JOB_TABLE,
                         field_getters={"status.successful": path_getter("status.succeeded")})

    def defaults(self, obj: dict[str, Any]) -> None:
        spec = obj.setdefault("spec", {})
        if not isinstance(spec, dict):
            return
        if spec.get("completions") is None and spec.get("parallelism") is None:
            spec["completions"] = 1
            spec["parallelism"] = 1
        spec.setdefault("parallelism", 1)
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
        _default_template(obj)
        template = spec.get("template")
        if isinstance(template, dict) and isinstance(template.get("spec"), dict):
            template["spec"].setdefault("restartPolicy", "Never")

    def prepare_for_create(self, obj: dict[str, Any]) -> None:
        # Upstream generates a unique selector from the job's uid unless spec.manualSelector is set.
        spec = obj.get("spec")
        if not isinstance(spec, dict) or spec.get("manualSelector"):
            return
        uid = obj["metadata"].get("uid") or str(uuid.uuid4())
        name = obj["metadata"].get("name", "")
        labels = {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
                  "controller-uid": uid, "job-name": name}
        spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
        template = spec.setdefault("template", {})
        if isinstance(template, dict):
            template.setdefault("metadata", {}).setdefault("labels", {}).update(labels)

    def validate(self, obj: dict[str, Any]) -> list[Cause]:
        causes = _validate_selector_matches_template(obj)
        spec = get_path(obj, "spec.template.spec")
        causes += validate_pod_spec(spec, "spec.template.spec")
        if isinstance(spec, dict) and spec.get("restartPolicy") == "Always":
            causes.append(Cause("FieldValueNotSupported", 'Unsupported value: "Always": supported values: '
                                '"OnFailure", "Never"', "spec.template.spec.restartPolicy"))
        return causes

    def validate_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[Cause]:
        causes = self.validate(new) + immutable(new, old, "spec.selector") + immutable(new, old, "spec.completions")
        return causes


def _job_status(job: dict[str, Any]) -> str:
    for cond in get_path(job, "status.conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed", "Suspended"):
            return cond["type"]
    return "Running"


JOB_TABLE = Table(
    [Column("Status"), Column("Completions"), Column("Duration"), *WIDE],
    lambda j: [_job_status(j),
               f"{get_path(j, 'status.succeeded') or 0}/{get_path(j, 'spec.completions') or 1}",
               "", *_images(j), _selector_text(j)],
)


class CronJobStrategy(Strategy):
    def __init__(self) -> None:
        super().__init__(track_generation=True, table=CRONJOB_TABLE)

    def defaults(self, obj: dict[str, Any]) -> None:
        spec = obj.setdefault("spec", {})
        if not isinstance(spec, dict):
            return
        spec.setdefault("concurrencyPolicy", "Allow")
        spec.setdefault("suspend", False)
        spec.setdefault("successfulJobsHistoryLimit", 3)
        spec.setdefault("failedJobsHistoryLimit", 1)
        _default_template(obj, "spec.jobTemplate.spec.template")

    def validate(self, obj: dict[str, Any]) -> list[Cause]:
        causes = []
        schedule = get_path(obj, "spec.schedule")
        if not schedule or not isinstance(schedule, str):
            causes.append(Cause("FieldValueRequired", "Required value", "spec.schedule"))
        else:
            try:
                from croniter import croniter  # optional: validation is skipped when croniter is missing
                if not schedule.startswith("@") and not croniter.is_valid(schedule):
                    causes.append(Cause("FieldValueInvalid", f'Invalid value: "{schedule}": unparseable schedule',
                                        "spec.schedule"))
            except ImportError:
                pass
        policy = get_path(obj, "spec.concurrencyPolicy")
        if policy not in ("Allow", "Forbid", "Replace"):
            causes.append(Cause("FieldValueNotSupported", f'Unsupported value: "{policy}": supported values: '
                                '"Allow", "Forbid", "Replace"', "spec.concurrencyPolicy"))
        causes += validate_pod_spec(get_path(obj, "spec.jobTemplate.spec.template.spec"),
                                    "spec.jobTemplate.spec.template.spec")
        return causes


CRONJOB_TABLE = Table(
    [Column("Schedule"), Column("Timezone"), Column("Suspend", type="boolean"), Column("Active", type="integer"),
     Column("Last Schedule")],
    lambda c: [get_path(c, "spec.schedule") or "", get_path(c, "spec.timeZone") or "<none>",
               bool(get_path(c, "spec.suspend")), len(get_path(c, "status.active") or []),
               "<none>" if not get_path(c, "status.lastScheduleTime") else get_path(c, "status.lastScheduleTime")],
)


class HorizontalPodAutoscalerStrategy(Strategy):
    def __init__(self) -> None:
        super().__init__(track_generation=True, table=HPA_TABLE)

    def defaults(self, obj: dict[str, Any]) -> None:
        spec = obj.setdefault("spec", {})
        if not isinstance(spec, dict):
            return
        spec.setdefault("minReplicas", 1)
        if not spec.get("metrics"):
            spec["metrics"] = [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]

    def validate(self, obj: dict[str, Any]) -> list[Cause]:
        causes = required(obj, "spec.scaleTargetRef.kind") + required(obj, "spec.scaleTargetRef.name")
        max_replicas = get_path(obj, "spec.maxReplicas")
        if not isinstance(max_replicas, int) or max_replicas < 1:
            causes.append(Cause("FieldValueInvalid", f"Invalid value: {max_replicas}: must be greater than or "
                                "equal to 1", "spec.maxReplicas"))
        return causes


def _hpa_targets(hpa: dict[str, Any]) -> str:
    parts = []
    current = {m.get("resource", {}).get("name"): m for m in get_path(hpa, "status.currentMetrics") or []}
    for m in get_path(hpa, "spec.metrics") or []:
        if m.get("type") != "Resource":
            parts.append("<unknown>")
            continue
        name = m["resource"].get("name")
        target = m["resource"].get("target") or {}
        cur = (current.get(name) or {}).get("resource", {}).get("current", {})
        if target.get("type") == "Utilization":
            now = cur.get("averageUtilization")
            parts.append(f"{name}: {'<unknown>' if now is None else str(now) + '%'}/{target.get('averageUtilization')}%")
        else:
            parts.append(f"{name}: {cur.get('averageValue', '<unknown>')}/{target.get('averageValue')}")
    return ", ".join(parts) or "<none>"


HPA_TABLE = Table(
    [Column("Reference"), Column("Targets"), Column("MinPods", type="integer"), Column("MaxPods", type="integer"),
     Column("Replicas", type="integer")],
    lambda h: [f"{get_path(h, 'spec.scaleTargetRef.kind')}/{get_path(h, 'spec.scaleTargetRef.name')}",
               _hpa_targets(h), get_path(h, "spec.minReplicas") or 1, get_path(h, "spec.maxReplicas") or 0,
               get_path(h, "status.currentReplicas") or 0],
)


HPA_V1_ANNOTATIONS = {
    "metrics": "autoscaling.alpha.kubernetes.io/metrics",
    "behavior": "autoscaling.alpha.kubernetes.io/behavior",
    "conditions": "autoscaling.alpha.kubernetes.io/conditions",
    "currentMetrics": "autoscaling.alpha.kubernetes.io/current-metrics",
}


class HorizontalPodAutoscalerV1Strategy(Strategy):
    """autoscaling/v1, served from the same storage as v2 (the storage version), converted as upstream does:
    a CPU Utilization metric is `targetCPUUtilizationPercentage`; every other v2 field travels in the
    `autoscaling.alpha.kubernetes.io/*` annotations so a round trip through v1 loses nothing."""

    def __init__(self) -> None:
        super().__init__(track_generation=True)

    def validate(self, obj: dict[str, Any]) -> list[Cause]:
        return HorizontalPodAutoscalerStrategy().validate(obj)

    def defaults(self, obj: dict[str, Any]) -> None:
        spec = obj.setdefault("spec", {})
        if isinstance(spec, dict):
            spec.setdefault("minReplicas", 1)

    def from_storage(self, obj: dict[str, Any]) -> dict[str, Any]:
        v1 = copy.deepcopy(obj)
        v1["apiVersion"] = "autoscaling/v1"
        spec, status = v1.get("spec") or {}, v1.get("status") or {}
        annotations = dict((v1.get("metadata") or {}).get("annotations") or {})
        other_metrics = []
        for metric in spec.pop("metrics", None) or []:
            target = (metric.get("resource") or {}).get("target") or {}
            if (metric.get("type") == "Resource" and metric["resource"].get("name") == "cpu"
                    and target.get("type") == "Utilization"):
                spec["targetCPUUtilizationPercentage"] = target.get("averageUtilization")
            else:
                other_metrics.append(metric)
        if other_metrics:
            annotations[HPA_V1_ANNOTATIONS["metrics"]] = jsonutil.dumps(other_metrics).decode()
        if spec.get("behavior"):
            annotations[HPA_V1_ANNOTATIONS["behavior"]] = jsonutil.dumps(spec.pop("behavior")).decode()
        for metric in status.pop("currentMetrics", None) or []:
            current = (metric.get("resource") or {}).get("current") or {}
            if metric.get("type") == "Resource" and metric["resource"].get("name") == "cpu" and \
                    current.get("averageUtilization") is not None:
                status["currentCPUUtilizationPercentage"] = current["averageUtilization"]
        if status.get("conditions"):
            annotations[HPA_V1_ANNOTATIONS["conditions"]] = jsonutil.dumps(status.pop("conditions")).decode()
        if annotations:
            v1.setdefault("metadata", {})["annotations"] = annotations
        return v1

    def to_storage(self, obj: dict[str, Any]) -> dict[str, Any]:
        v2 = copy.deepcopy(obj)
        v2["apiVersion"] = "autoscaling/v2"
        spec = v2.setdefault("spec", {})
        meta = v2.setdefault("metadata", {})
        annotations = dict(meta.get("annotations") or {})
        metrics = []
        cpu = spec.pop("targetCPUUtilizationPercentage", None)
        if cpu is not None:
            metrics.append({"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": cpu}}})
        if HPA_V1_ANNOTATIONS["metrics"] in annotations:
            metrics += jsonutil.loads(annotations.pop(HPA_V1_ANNOTATIONS["metrics"]))
        if not metrics:  # v1 without a target means upstream's default: 80% CPU
            metrics = [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]
        spec["metrics"] = metrics
        if HPA_V1_ANNOTATIONS["behavior"] in annotations:
            spec["behavior"] = jsonutil.loads(annotations.pop(HPA_V1_ANNOTATIONS["behavior"]))
        status = v2.get("status")
        if isinstance(status, dict):
            cpu_now = status.pop("currentCPUUtilizationPercentage", None)
            if cpu_now is not None:
                status["currentMetrics"] = [{"type": "Resource", "resource": {
                    "name": "cpu", "current": {"averageUtilization": cpu_now}}}]
            if HPA_V1_ANNOTATIONS["conditions"] in annotations:
                status["conditions"] = jsonutil.loads(annotations.pop(HPA_V1_ANNOTATIONS["conditions"]))
        for key in HPA_V1_ANNOTATIONS.values():
            annotations.pop(key, None)
        if annotations:
            meta["annotations"] = annotations
        else:
            meta.pop("annotations", None)
        return v2


def resources() -> list[ResourceType]:
    rolling = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}
    return [
        ResourceType("apps", "v1", "Deployment", "deployments", True, WorkloadStrategy(DEPLOYMENT_TABLE, {
            "replicas": 1, "strategy": rolling, "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600}),
            short_names=("deploy",), categories=("all",), subresources=("status",), scale=ScaleSpec()),
        ResourceType("apps", "v1", "ReplicaSet", "replicasets", True, WorkloadStrategy(REPLICASET_TABLE, {
            "replicas": 1}), short_names=("rs",), categories=("all",), subresources=("status",), scale=ScaleSpec()),
        ResourceType("apps", "v1", "StatefulSet", "statefulsets", True, WorkloadStrategy(STATEFULSET_TABLE, {
            "replicas": 1, "podManagementPolicy": "OrderedReady", "revisionHistoryLimit": 10,
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"}}),
            short_names=("sts",), categories=("all",), subresources=("status",), scale=ScaleSpec()),
        ResourceType("apps", "v1", "DaemonSet", "daemonsets", True, WorkloadStrategy(DAEMONSET_TABLE, {
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
            "revisionHistoryLimit": 10}), short_names=("ds",), categories=("all",), subresources=("status",)),
        ResourceType("apps", "v1", "ControllerRevision", "controllerrevisions", True, Strategy(table=Table(
            [Column("Controller"), Column("Revision", type="integer")],
            lambda r: [next((f"{o.get('kind', '').lower()}.{o.get('apiVersion', '').split('/')[0]}/{o.get('name')}"
                             for o in get_path(r, "metadata.ownerReferences") or [] if o.get("controller")),
                            "<none>"), r.get("revision", 0)]))),
        ResourceType("batch", "v1", "Job", "jobs", True, JobStrategy(), categories=("all",),
                     subresources=("status",)),
        ResourceType("batch", "v1", "CronJob", "cronjobs", True, CronJobStrategy(), short_names=("cj",),
                     categories=("all",), subresources=("status",)),
        ResourceType("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", True,
                     HorizontalPodAutoscalerStrategy(), short_names=("hpa",), categories=("all",),
                     subresources=("status",)),
        # Registered after v2, so discovery prefers v2; both read and write the same stored objects.
        ResourceType("autoscaling", "v1", "HorizontalPodAutoscaler", "horizontalpodautoscalers", True,
                     HorizontalPodAutoscalerV1Strategy(), short_names=("hpa",), categories=("all",),
                     subresources=("status",)),
    ]
