"""The HorizontalPodAutoscaler controller (autoscaling/v2), as upstream's pkg/controller/podautoscaler.

Every sync period it reads the target's scale subresource, the usage of the target's pods from the resource metrics
API (metrics.k8s.io, served by the API server from a MetricsSource), and proposes `ceil(current * usage / target)`
replicas per metric — Resource and ContainerResource metrics, cpu or memory, as Utilization (of the pods' requests)
or AverageValue — leaving the count alone within the 10% tolerance. The largest proposal wins, then it is
stabilized (the highest recommendation of the scale-down window, 300 s by default; the lowest of the scale-up
window, 0 s) and rate-limited by the behavior's Pods/Percent policies over their periods (selectPolicy Max, Min or
Disabled), or, without a behavior, by upstream's legacy rule (at most double, or 4, per sync). Conditions
AbleToScale / ScalingActive / ScalingLimited and status currentReplicas / desiredReplicas / currentMetrics /
lastScaleTime are kept as upstream writes them.

Simplified but as upstream in spirit: pods without metrics count as using 100% of their request (or the target)
on a scale-down and 0% on a scale-up; not-ready and pending pods count as 0% on a scale-up and are ignored
otherwise (CPU only, with upstream's 5 min initialization period and 30 s readiness delay, both settable); Pods,
Object and External metrics (custom/external metrics APIs) are not served and are reported as invalid metrics.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import orjson

from controlplane.client import (
    ApiClient,
    Clock,
    NotFound,
    SharedInformerFactory,
    resource_for,
)
from controlplane.client import errors as api_errors
from controlplane.client.protocol import copy_object
from controlplane.client.resources import HORIZONTALPODAUTOSCALERS, PODS
from controlplane.controllers.base import DONE, ControllerContext, Enqueue, Result
from controlplane.client.events import EventRecorder
from controlplane.controllers.controller_utils import (
    Obj,
    Timers,
    controller_clock,
    format_time,
    key_of,
    meta,
    option,
    parse_time,
    pod_condition,
    pod_phase,
)
from controlplane.scheduler.quantity import QuantityError, milli_value

log = logging.getLogger(__name__)

METRICS_PATH = "/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods"
DEFAULT_SCALE_UP = {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
                    "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15},
                                 {"type": "Percent", "value": 100, "periodSeconds": 15}]}
DEFAULT_SCALE_DOWN = {"stabilizationWindowSeconds": None, "selectPolicy": "Max",
                      "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]}
INT32_MAX, INT32_MIN = 2**31 - 1, -(2**31)


class MetricError(Exception):
    """A metric could not be computed; carries the condition upstream sets for it."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class PodMetric:
    value: int  # milli-units
    timestamp: float
    window: float


def format_milli(milli: int) -> str:
    """resource.NewMilliQuantity(x, DecimalSI).String(): "250m", "1", "1500m", "2M"."""
    if milli % 1000:
        return f"{milli}m"
    n, suffixes, i = milli // 1000, ["", "k", "M", "G", "T", "P", "E"], 0
    while n and n % 1000 == 0 and i < len(suffixes) - 1:
        n //= 1000
        i += 1
    return f"{n}{suffixes[i]}"


def _duration(text: str | None) -> float:
    if not text:
        return 0.0
    try:
        return float(text.rstrip("s")) if text.endswith("s") and text[-2:-1].isdigit() else 0.0
    except ValueError:
        return 0.0


def scaling_rules(behavior: Obj | None, direction: str, downscale_window: float) -> Obj:
    """GenerateHPAScale{Up,Down}Rules: every missing field of the behavior takes upstream's default."""
    default = DEFAULT_SCALE_UP if direction == "scaleUp" else DEFAULT_SCALE_DOWN
    given = (behavior or {}).get(direction) or {}
    rules = {k: copy_object(given[k]) if given.get(k) is not None else copy_object(v) for k, v in default.items()}
    if rules["stabilizationWindowSeconds"] is None:
        rules["stabilizationWindowSeconds"] = downscale_window
    return rules


def set_condition(hpa: Obj, ctype: str, status: str, reason: str, message: str, now: str) -> None:
    """setConditionInList: the transition time moves only when the status does."""
    conditions = hpa.setdefault("status", {}).setdefault("conditions", [])
    for cond in conditions:
        if cond.get("type") == ctype:
            if cond.get("status") != status:
                cond["lastTransitionTime"] = now
            cond.update(status=status, reason=reason, message=message)
            return
    conditions.append({"type": ctype, "status": status, "lastTransitionTime": now, "reason": reason,
                       "message": message})


class HorizontalPodAutoscalerController:
    name = "horizontalpodautoscaling"

    def __init__(self, ctx: ControllerContext | None = None, *, workers: int | None = None, clock: Clock | None = None,
                 sync_period: float | None = None, tolerance: float | None = None,
                 downscale_stabilization: float | None = None, cpu_initialization_period: float | None = None,
                 initial_readiness_delay: float | None = None) -> None:
        # kube-controller-manager's --horizontal-pod-autoscaler-* flags, by their Python names.
        self.workers = workers or option(ctx, "concurrent_horizontal_pod_autoscaler_syncs", 5)
        self.clock: Clock = controller_clock(ctx, clock)
        self.sync_period = float(sync_period if sync_period is not None else
                                 option(ctx, "horizontal_pod_autoscaler_sync_period", 15.0))
        self.tolerance = float(tolerance if tolerance is not None else
                               option(ctx, "horizontal_pod_autoscaler_tolerance", 0.1))
        self.downscale_stabilization = float(downscale_stabilization if downscale_stabilization is not None else
                                             option(ctx, "horizontal_pod_autoscaler_downscale_stabilization", 300.0))
        self.cpu_initialization_period = float(
            cpu_initialization_period if cpu_initialization_period is not None else
            option(ctx, "horizontal_pod_autoscaler_cpu_initialization_period", 300.0))
        self.initial_readiness_delay = float(
            initial_readiness_delay if initial_readiness_delay is not None else
            option(ctx, "horizontal_pod_autoscaler_initial_readiness_delay", 30.0))
        self.recommendations: dict[str, list[tuple[int, float]]] = {}
        self.scale_up_events: dict[str, list[list[Any]]] = {}  # [change, time, outdated]
        self.scale_down_events: dict[str, list[list[Any]]] = {}

    def setup(self, client: ApiClient, informers: SharedInformerFactory, enqueue: Enqueue) -> None:
        self.client = client
        self.enqueue = enqueue
        self.timers = Timers(self.clock, enqueue)
        self.events = EventRecorder(client, "horizontal-pod-autoscaler", self.clock)
        self.hpa_informer = informers.informer(HORIZONTALPODAUTOSCALERS)

        def updated(old: Obj, new: Obj) -> None:
            # Our own status writes must not turn the sync period into a busy loop: only spec changes count.
            if meta(old).get("generation") != meta(new).get("generation"):
                enqueue(key_of(new))

        self.hpa_informer.add_handler(on_add=lambda h: enqueue(key_of(h)), on_update=updated,
                                      on_delete=self._deleted)

    async def shutdown(self) -> None:
        await self.timers.stop()
        await self.events.aclose()

    def _deleted(self, hpa: Obj) -> None:
        key = key_of(hpa)
        self.timers.cancel(key)
        self.recommendations.pop(key, None)
        self.scale_up_events.pop(key, None)
        self.scale_down_events.pop(key, None)

    def _now(self) -> str:
        return format_time(self.clock.now())

    async def reconcile(self, key: str) -> Result:
        cached = self.hpa_informer.get(key)
        if cached is None:
            return DONE
        try:
            await self._reconcile_autoscaler(copy_object(cached), key)
        except Exception as exc:  # noqa: BLE001 - upstream retries at the sync period, not with fast backoff
            log.info("horizontal pod autoscaler %s: %s", key, exc)
        finally:
            self.timers.after(key, self.sync_period)
        return DONE

    # -- the algorithm ----------------------------------------------------------------------------------------

    async def _reconcile_autoscaler(self, hpa: Obj, key: str) -> None:
        original = copy_object(hpa.get("status") or {})
        spec = hpa.get("spec") or {}
        ref = spec.get("scaleTargetRef") or {}
        namespace = meta(hpa).get("namespace")
        reference = f"{ref.get('kind')}/{namespace}/{ref.get('name')}"
        try:
            target = resource_for(ref.get("apiVersion") or "", ref.get("kind") or "")
            scale = await self.client.get_subresource(target, ref.get("name", ""), "scale", namespace)
        except (KeyError, api_errors.ApiError) as exc:
            message = f"the HPA controller was unable to get the target's current scale: {exc}"
            self.events.event(hpa, "Warning", "FailedGetScale", str(exc))
            set_condition(hpa, "AbleToScale", "False", "FailedGetScale", message, self._now())
            await self._update_status_if_needed(original, hpa)
            raise RuntimeError(f"failed to query scale subresource for {reference}: {exc}") from exc
        set_condition(hpa, "AbleToScale", "True", "SucceededGetScale",
                      "the HPA controller was able to get the target's current scale", self._now())
        current = int((scale.get("spec") or {}).get("replicas") or 0)
        if not self.recommendations.get(key):
            # recordInitialRecommendation: the current size is the first recommendation the window remembers.
            self.recommendations[key] = [(current, self.clock.now())]
        min_replicas = 1 if spec.get("minReplicas") is None else int(spec["minReplicas"])
        max_replicas = int(spec.get("maxReplicas") or 0)
        statuses: list[Obj] = []
        rescale_reason = ""
        desired = 0
        rescale = True
        error: Exception | None = None
        if current == 0 and min_replicas != 0:
            desired, rescale = 0, False
            set_condition(hpa, "ScalingActive", "False", "ScalingDisabled",
                          "scaling is disabled since the replica count of the target is zero", self._now())
        elif current > max_replicas:
            rescale_reason, desired = "Current number of replicas above Spec.MaxReplicas", max_replicas
        elif current < min_replicas:
            rescale_reason, desired = "Current number of replicas below Spec.MinReplicas", min_replicas
        else:
            proposal, metric_name, statuses, error = await self._replicas_for_metrics(hpa, scale,
                                                                                    spec.get("metrics") or [])
            if proposal == -1:
                self._set_status(hpa, current, int((hpa.get("status") or {}).get("desiredReplicas") or 0),
                                 statuses, False)
                await self._update_status_if_needed(original, hpa)
                self.events.event(hpa, "Warning", "FailedComputeMetricsReplicas", str(error))
                raise RuntimeError(f"failed to compute desired number of replicas based on listed metrics for "
                                   f"{reference}: {error}")
            desired = max(desired, proposal)
            if desired > current:
                rescale_reason = f"{metric_name} above target"
            if desired < current:
                rescale_reason = "All metrics below target"
            if spec.get("behavior") is None:
                desired = self._normalize(hpa, key, current, desired, min_replicas)
            else:
                desired = self._normalize_with_behaviors(hpa, key, current, desired, min_replicas)
            rescale = desired != current
        if rescale:
            body = copy_object(scale)
            body.setdefault("spec", {})["replicas"] = desired
            try:
                await self.client.update_subresource(target, body, "scale", name=ref.get("name"), namespace=namespace)
            except api_errors.ApiError as exc:
                self.events.event(hpa, "Warning", "FailedRescale",
                                        f"New size: {desired}; reason: {rescale_reason}; error: {exc}")
                set_condition(hpa, "AbleToScale", "False", "FailedUpdateScale",
                              f"the HPA controller was unable to update the target scale: {exc}", self._now())
                self._set_status(hpa, current, int((hpa.get("status") or {}).get("desiredReplicas") or 0),
                                 statuses, False)
                await self._update_status_if_needed(original, hpa)
                raise RuntimeError(f"failed to rescale {reference}: {exc}") from exc
            set_condition(hpa, "AbleToScale", "True", "SucceededRescale",
                          f"the HPA controller was able to update the target scale to {desired}", self._now())
            self.events.event(hpa, "Normal", "SuccessfulRescale",
                                    f"New size: {desired}; reason: {rescale_reason}")
            self._store_scale_event(spec.get("behavior"), key, current, desired)
        else:
            desired = current
        self._set_status(hpa, current, desired, statuses, rescale)
        await self._update_status_if_needed(original, hpa)
        if error is not None:
            raise error

    def _set_status(self, hpa: Obj, current: int, desired: int, statuses: list[Obj], rescale: bool) -> None:
        old = hpa.get("status") or {}
        status: Obj = {"currentReplicas": current, "desiredReplicas": desired,
                       "observedGeneration": meta(hpa).get("generation", 1)}
        if old.get("lastScaleTime"):
            status["lastScaleTime"] = old["lastScaleTime"]
        if statuses:
            status["currentMetrics"] = statuses
        if old.get("conditions"):
            status["conditions"] = old["conditions"]
        if rescale:
            status["lastScaleTime"] = self._now()
        hpa["status"] = status

    async def _update_status_if_needed(self, original: Obj, hpa: Obj) -> None:
        if original == hpa.get("status"):
            return
        try:
            await self.client.update_status(HORIZONTALPODAUTOSCALERS, hpa)
        except (api_errors.Conflict, NotFound):
            pass  # the next sync writes a fresh status

    async def _replicas_for_metrics(self, hpa: Obj, scale: Obj,
                                    metrics: list[Obj]) -> tuple[int, str, list[Obj], Exception | None]:
        selector = (scale.get("status") or {}).get("selector") or ""
        if not selector:
            message = ("selector is required", "InvalidSelector")
            set_condition(hpa, "ScalingActive", "False", message[1],
                          "the HPA target's scale is missing a selector", self._now())
            return -1, "", [], RuntimeError(message[0])
        spec_replicas = int((scale.get("spec") or {}).get("replicas") or 0)
        statuses: list[Obj] = []
        replicas, name = 0, ""
        invalid = 0
        first_error: MetricError | None = None
        pods: list[Obj] | None = None
        for metric in metrics:
            try:
                if pods is None:
                    namespace = meta(hpa).get("namespace") or ""
                    pods = (await self.client.list(PODS, namespace, label_selector=selector))["items"]
                proposal, metric_name, status = await self._replicas_for_metric(hpa, metric, spec_replicas,
                                                                                selector, pods)
            except MetricError as exc:
                invalid += 1
                first_error = first_error or exc
                statuses.append({"type": ""})
                continue
            statuses.append(status)
            if replicas == 0 or proposal > replicas:
                replicas, name = proposal, metric_name
        statuses = [s for s in statuses if s.get("type")]
        if invalid >= len(metrics) or (invalid > 0 and replicas < spec_replicas):
            assert first_error is not None
            set_condition(hpa, "ScalingActive", "False", first_error.reason,
                          f"the HPA was unable to compute the replica count: {first_error}", self._now())
            return -1, "", statuses, RuntimeError(f"invalid metrics ({invalid} invalid out of {len(metrics)}), "
                                                  f"first error is: {first_error}")
        set_condition(hpa, "ScalingActive", "True", "ValidMetricFound",
                      f"the HPA was able to successfully calculate a replica count from {name}", self._now())
        error = (RuntimeError(f"invalid metrics ({invalid} invalid out of {len(metrics)}), first error is: "
                              f"{first_error}") if first_error is not None else None)
        return replicas, name, statuses, error

    async def _pod_metrics(self, namespace: str, selector: str, resource: str,
                           container: str | None) -> dict[str, PodMetric]:
        try:
            resp = await self.client.raw("GET", METRICS_PATH.format(namespace=namespace),
                                         params={"labelSelector": selector})
        except api_errors.ApiError as exc:
            raise MetricError(f"unable to get metrics for resource {resource}: unable to fetch metrics from resource "
                              f"metrics API: {exc.message or exc}", "FailedGetResourceMetric") from exc
        out: dict[str, PodMetric] = {}
        for item in orjson.loads(resp.content).get("items") or []:
            total, missing = 0, False
            containers = item.get("containers") or []
            for c in containers:
                if container is not None and c.get("name") != container:
                    continue
                value = (c.get("usage") or {}).get(resource)
                if value is None:
                    missing = True
                    break
                try:
                    total += milli_value(value)
                except QuantityError:
                    missing = True
                    break
            if missing or (container is not None and not any(c.get("name") == container for c in containers)):
                continue
            out[item["metadata"]["name"]] = PodMetric(total, parse_time(item.get("timestamp")) or 0.0,
                                                      _duration(item.get("window")))
        return out

    async def _replicas_for_metric(self, hpa: Obj, metric: Obj, current: int, selector: str,
                                   pods: list[Obj]) -> tuple[int, str, Obj]:
        mtype = metric.get("type")
        if mtype not in ("Resource", "ContainerResource"):
            raise MetricError(f"unsupported metric source type {mtype!r} (only the resource metrics API is served)",
                              "InvalidMetricSourceType")
        source = metric.get("resource" if mtype == "Resource" else "containerResource") or {}
        resource = source.get("name") or ""
        container = source.get("container") if mtype == "ContainerResource" else None
        target = source.get("target") or {}
        namespace = meta(hpa).get("namespace") or ""
        metrics = await self._pod_metrics(namespace, selector, resource, container)
        if target.get("averageUtilization") is not None:
            replicas, utilization, raw = self._resource_replicas(current, int(target["averageUtilization"]),
                                                                 resource, container, metrics, pods)
            current_status = {"averageUtilization": utilization, "averageValue": format_milli(raw)}
        elif target.get("averageValue") is not None:
            try:
                target_milli = milli_value(target["averageValue"])
            except QuantityError as exc:
                raise MetricError(f"invalid target value: {exc}", "FailedGetResourceMetric") from exc
            replicas, raw = self._plain_replicas(current, target_milli, resource, metrics, pods)
            current_status = {"averageValue": format_milli(raw)}
        else:
            raise MetricError("invalid resource metric source: neither a utilization target nor a value target "
                              "was set", "FailedGetResourceMetric")
        key = "resource" if mtype == "Resource" else "containerResource"
        status: Obj = {"type": mtype, key: {"name": resource, "current": current_status}}
        if container is not None:
            status[key]["container"] = container
        return replicas, f"{'container ' if container else ''}resource {resource}", status

    def _group_pods(self, pods: list[Obj], metrics: dict[str, PodMetric],
                    resource: str) -> tuple[int, set[str], set[str], set[str]]:
        """groupPods: (ready count, unready, missing, ignored)."""
        ready_count = 0
        unready: set[str] = set()
        missing: set[str] = set()
        ignored: set[str] = set()
        now = self.clock.now()
        for pod in pods:
            name = meta(pod)["name"]
            if meta(pod).get("deletionTimestamp") or pod_phase(pod) == "Failed":
                ignored.add(name)
                continue
            if pod_phase(pod) == "Pending":
                unready.add(name)
                continue
            metric = metrics.get(name)
            if metric is None:
                missing.add(name)
                continue
            if resource == "cpu":
                cond = pod_condition(pod, "Ready")
                start = parse_time((pod.get("status") or {}).get("startTime"))
                if cond is None or start is None:
                    is_unready = True
                else:
                    transition = parse_time(cond.get("lastTransitionTime")) or 0.0
                    if start + self.cpu_initialization_period > now:
                        # Still initializing: only samples taken after a whole window of readiness count.
                        is_unready = cond.get("status") == "False" or metric.timestamp < transition + metric.window
                    else:
                        # Ignore pods that never became ready.
                        is_unready = (cond.get("status") == "False"
                                      and start + self.initial_readiness_delay > transition)
                if is_unready:
                    unready.add(name)
                    continue
            ready_count += 1
        return ready_count, unready, missing, ignored

    def _requests(self, pods: list[Obj], resource: str, container: str | None) -> dict[str, int]:
        out: dict[str, int] = {}
        for pod in pods:
            total = 0
            for c in (pod.get("spec") or {}).get("containers") or []:
                if container is not None and c.get("name") != container:
                    continue
                request = ((c.get("resources") or {}).get("requests") or {}).get(resource)
                if request is None:
                    raise MetricError(f"missing request for {resource} in container {c.get('name')} of Pod "
                                      f"{meta(pod)['name']}", "FailedGetResourceMetric")
                total += milli_value(request)
            out[meta(pod)["name"]] = total
        return out

    def _utilization_ratio(self, metrics: dict[str, PodMetric], requests: dict[str, int],
                           target: int) -> tuple[float, int, int]:
        total_usage = total_request = count = 0
        for name, metric in metrics.items():
            if name not in requests:
                continue
            total_usage += metric.value
            total_request += requests[name]
            count += 1
        if total_request == 0:
            raise MetricError("no metrics returned matched known pods", "FailedGetResourceMetric")
        utilization = int(total_usage * 100 / total_request)
        return utilization / target, utilization, total_usage // count

    def _resource_replicas(self, current: int, target: int, resource: str, container: str | None,
                           metrics: dict[str, PodMetric], pods: list[Obj]) -> tuple[int, int, int]:
        if not pods:
            raise MetricError("no pods returned by selector while calculating replica count",
                              "FailedGetResourceMetric")
        ready, unready, missing, ignored = self._group_pods(pods, metrics, resource)
        metrics = {k: v for k, v in metrics.items() if k not in ignored and k not in unready}
        if not metrics:
            raise MetricError(f"unable to get metrics for resource {resource}: did not receive metrics for targeted "
                              f"pods (pods might be unready)", "FailedGetResourceMetric")
        requests = self._requests(pods, resource, container)
        ratio, utilization, raw = self._utilization_ratio(metrics, requests, target)
        scale_up_with_unready = bool(unready) and ratio > 1.0
        if not scale_up_with_unready and not missing:
            if abs(1.0 - ratio) <= self.tolerance:
                return current, utilization, raw
            return math.ceil(ratio * ready), utilization, raw
        if missing:
            fallback = max(100, target)
            for name in missing:
                # Missing pods pull towards no change: full usage on a scale-down, none on a scale-up.
                value = requests.get(name, 0) * fallback // 100 if ratio < 1.0 else 0
                metrics[name] = PodMetric(value, 0.0, 0.0)
        if scale_up_with_unready:
            for name in unready:
                metrics[name] = PodMetric(0, 0.0, 0.0)
        new_ratio, _, _ = self._utilization_ratio(metrics, requests, target)
        if (abs(1.0 - new_ratio) <= self.tolerance or (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio)):
            return current, utilization, raw
        replicas = math.ceil(new_ratio * len(metrics))
        if (new_ratio < 1.0 and replicas > current) or (new_ratio > 1.0 and replicas < current):
            return current, utilization, raw
        return replicas, utilization, raw

    def _plain_replicas(self, current: int, target: int, resource: str, metrics: dict[str, PodMetric],
                        pods: list[Obj]) -> tuple[int, int]:
        if not pods:
            raise MetricError("no pods returned by selector while calculating replica count",
                              "FailedGetResourceMetric")
        ready, unready, missing, ignored = self._group_pods(pods, metrics, resource)
        metrics = {k: v for k, v in metrics.items() if k not in ignored and k not in unready}
        if not metrics:
            raise MetricError(f"unable to get metrics for resource {resource}: did not receive metrics for targeted "
                              f"pods (pods might be unready)", "FailedGetResourceMetric")

        def ratio_of(ms: dict[str, PodMetric]) -> tuple[float, int]:
            usage = sum(m.value for m in ms.values()) // len(ms)
            return usage / target, usage

        ratio, usage = ratio_of(metrics)
        scale_up_with_unready = bool(unready) and ratio > 1.0
        if not scale_up_with_unready and not missing:
            if abs(1.0 - ratio) <= self.tolerance:
                return current, usage
            return math.ceil(ratio * ready), usage
        for name in missing:
            metrics[name] = PodMetric(target if ratio < 1.0 else 0, 0.0, 0.0)
        if scale_up_with_unready:
            for name in unready:
                metrics[name] = PodMetric(0, 0.0, 0.0)
        new_ratio, _ = ratio_of(metrics)
        if abs(1.0 - new_ratio) <= self.tolerance or (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio):
            return current, usage
        replicas = math.ceil(new_ratio * len(metrics))
        if (new_ratio < 1.0 and replicas > current) or (new_ratio > 1.0 and replicas < current):
            return current, usage
        return replicas, usage

    # -- normalization: stabilization and rate limits ---------------------------------------------------------

    def _normalize(self, hpa: Obj, key: str, current: int, desired: int, min_replicas: int) -> int:
        """normalizeDesiredReplicas (no behavior): the scale-down window, then upstream's legacy rate limit."""
        stabilized = self._stabilize(key, desired)
        if stabilized != desired:
            set_condition(hpa, "AbleToScale", "True", "ScaleDownStabilized", "recent recommendations were higher "
                          "than current one, applying the highest recent recommendation", self._now())
        else:
            set_condition(hpa, "AbleToScale", "True", "ReadyForNewScale", "recommended size matches current size",
                          self._now())
        max_replicas = int((hpa.get("spec") or {}).get("maxReplicas") or 0)
        scale_up_limit = max(2 * current, 4)
        if max_replicas > scale_up_limit:
            maximum, reason, message = scale_up_limit, "ScaleUpLimit", ("the desired replica count is increasing "
                                                                        "faster than the maximum scale rate")
        else:
            maximum, reason, message = max_replicas, "TooManyReplicas", ("the desired replica count is more than "
                                                                         "the maximum replica count")
        if stabilized < min_replicas:
            result, reason, message = min_replicas, "TooFewReplicas", ("the desired replica count is less than the "
                                                                       "minimum replica count")
        elif stabilized > maximum:
            result = maximum
        else:
            result, reason, message = stabilized, "DesiredWithinRange", "the desired count is within the acceptable range"
        set_condition(hpa, "ScalingLimited", "False" if result == stabilized else "True", reason, message,
                      self._now())
        return result

    def _stabilize(self, key: str, desired: int) -> int:
        now = self.clock.now()
        cutoff = now - self.downscale_stabilization
        recs = self.recommendations.setdefault(key, [])
        best = desired
        old_index = None
        for i, (value, at) in enumerate(recs):
            if at < cutoff:
                old_index = i
            elif value > best:
                best = value
        if old_index is not None:
            recs[old_index] = (desired, now)
        else:
            recs.append((desired, now))
        return best

    def _normalize_with_behaviors(self, hpa: Obj, key: str, current: int, desired: int, min_replicas: int) -> int:
        behavior = (hpa.get("spec") or {}).get("behavior")
        up = scaling_rules(behavior, "scaleUp", self.downscale_stabilization)
        down = scaling_rules(behavior, "scaleDown", self.downscale_stabilization)
        stabilized, reason, message = self._stabilize_with_behaviors(key, current, desired, up, down)
        if stabilized != desired:
            set_condition(hpa, "AbleToScale", "True", reason, message, self._now())
        else:
            set_condition(hpa, "AbleToScale", "True", "ReadyForNewScale", "recommended size matches current size",
                          self._now())
        max_replicas = int((hpa.get("spec") or {}).get("maxReplicas") or 0)
        result, reason, message = self._rate_limited(key, current, stabilized, min_replicas, max_replicas, up, down)
        set_condition(hpa, "ScalingLimited", "False" if result == stabilized else "True", reason, message,
                      self._now())
        return result

    def _stabilize_with_behaviors(self, key: str, current: int, desired: int, up: Obj,
                                  down: Obj) -> tuple[int, str, str]:
        now = self.clock.now()
        up_cutoff = now - float(up["stabilizationWindowSeconds"])
        down_cutoff = now - float(down["stabilizationWindowSeconds"])
        up_rec = down_rec = desired
        recs = self.recommendations.setdefault(key, [])
        old_index = None
        for i, (value, at) in enumerate(recs):
            if at > up_cutoff:
                up_rec = min(value, up_rec)
            if at > down_cutoff:
                down_rec = max(value, down_rec)
            if at < up_cutoff and at < down_cutoff:
                old_index = i
        recommendation = max(current, up_rec)
        recommendation = min(recommendation, down_rec)
        if old_index is not None:
            recs[old_index] = (desired, now)
        else:
            recs.append((desired, now))
        if desired >= current:
            return recommendation, "ScaleUpStabilized", ("recent recommendations were lower than current one, "
                                                         "applying the lowest recent recommendation")
        return recommendation, "ScaleDownStabilized", ("recent recommendations were higher than current one, "
                                                       "applying the highest recent recommendation")

    def _change_in_period(self, events: list[list[Any]], period: float) -> int:
        cutoff = self.clock.now() - period
        return sum(int(change) for change, at, _ in events if at > cutoff)

    def _limit(self, current: int, key: str, rules: Obj, up: bool) -> int:
        select = rules.get("selectPolicy") or "Max"
        if select == "Disabled":
            return current
        ups = self.scale_up_events.get(key, [])
        downs = self.scale_down_events.get(key, [])
        # Scaling up, "Max" wants the highest proposal; scaling down, the lowest (the biggest change either way).
        pick_highest = (select != "Min") if up else (select == "Min")
        result = INT32_MIN if pick_highest else INT32_MAX
        for policy in rules.get("policies") or []:
            period = float(policy.get("periodSeconds") or 0)
            start = current - self._change_in_period(ups, period) + self._change_in_period(downs, period)
            value = int(policy.get("value") or 0)
            if policy.get("type") == "Pods":
                proposed = start + value if up else start - value
            elif up:
                proposed = math.ceil(start * (1 + value / 100))
            else:
                proposed = int(start * (1 - value / 100))
            result = max(result, proposed) if pick_highest else min(result, proposed)
        return result

    def _rate_limited(self, key: str, current: int, desired: int, min_replicas: int, max_replicas: int, up: Obj,
                      down: Obj) -> tuple[int, str, str]:
        if desired > current:
            limit = max(self._limit(current, key, up, True), current)
            if max_replicas > limit:
                maximum, reason, message = limit, "ScaleUpLimit", ("the desired replica count is increasing faster "
                                                                   "than the maximum scale rate")
            else:
                maximum, reason, message = max_replicas, "TooManyReplicas", ("the desired replica count is more than "
                                                                             "the maximum replica count")
            if desired > maximum:
                return maximum, reason, message
        elif desired < current:
            limit = min(self._limit(current, key, down, False), current)
            if min_replicas < limit:
                minimum, reason, message = limit, "ScaleDownLimit", ("the desired replica count is decreasing faster "
                                                                     "than the maximum scale rate")
            else:
                minimum, reason, message = min_replicas, "TooFewReplicas", ("the desired replica count is less than "
                                                                            "the minimum replica count")
            if desired < minimum:
                return minimum, reason, message
        return desired, "DesiredWithinRange", "the desired count is within the acceptable range"

    def _store_scale_event(self, behavior: Obj | None, key: str, previous: int, new: int) -> None:
        if behavior is None:
            return  # only behaviors' policies read the events
        up = new > previous
        rules = scaling_rules(behavior, "scaleUp" if up else "scaleDown", self.downscale_stabilization)
        longest = max((float(p.get("periodSeconds") or 0) for p in rules.get("policies") or []), default=0.0)
        events = (self.scale_up_events if up else self.scale_down_events).setdefault(key, [])
        now = self.clock.now()
        for event in events:
            if event[1] <= now - longest:
                event[2] = True  # outdated: no policy period reaches back that far
        change = abs(new - previous)
        for i, event in enumerate(events):
            if event[2]:
                events[i] = [change, now, False]
                return
        events.append([change, now, False])
