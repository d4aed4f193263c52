"""Table-driven tests of each filter/score plugin: the verdict per node (vector and per-node forms must agree)
and the normalised score."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scheduler_builders import cluster, node, pod, taint

from controlplane.scheduler.framework import CycleState, NodeList, PreFilterResult
from controlplane.scheduler.podinfo import PodInfo

ZONE = "topology.kubernetes.io/zone"


def filter_verdicts(plugin: str, nodes: list[dict], p: dict, existing: tuple[dict, ...] = (),
                    namespaces: dict[str, dict[str, str]] | None = None) -> dict[str, str | None]:
    """Node name -> the plugin's failure message (None = passes), after all PreFilters ran."""
    cache, sched = cluster(*nodes, pods=existing)
    for ns, labels in (namespaces or {}).items():
        cache.upsert_object("Namespace", {"metadata": {"name": ns, "labels": labels}})
    fwk = sched.frameworks["default-scheduler"]
    pl = fwk.all_plugins[plugin]
    pi = PodInfo(p)
    state = CycleState()
    _, st, _ = fwk.run_pre_filter(state, pi)
    assert st is None or st.is_success(), st
    out: dict[str, str | None] = {}
    skipped = plugin in state.skip_filter_plugins
    vec = None if skipped else pl.filter_vector(state, pi)
    explained: dict[str, Any] = {}
    if vec is not None and hasattr(pl, "explain_vector"):
        failing = np.flatnonzero(~vec & cache.live)
        for s, e in zip(failing.tolist(), pl.explain_vector(state, pi, failing)):
            explained[cache.names[s]] = e
    for info in cache.node_infos():
        scalar = None if skipped else pl.filter(state, pi, info)
        if vec is not None:
            assert bool(vec[info.slot]) == (scalar is None), (info.name, scalar)
        if info.name in explained:
            assert explained[info.name] == scalar, (info.name, explained[info.name], scalar)
        out[info.name] = None if scalar is None else scalar.message()
    return out


def scores(plugin: str, nodes: list[dict], p: dict, existing: tuple[dict, ...] = (), **kw: Any) -> dict[str, int]:
    """Node name -> normalised score of ``plugin`` over all nodes (vector and per-node raw scores must agree)."""
    cache, sched = cluster(*nodes, pods=existing, **kw)
    fwk = sched.frameworks["default-scheduler"]
    pl = fwk.all_plugins[plugin]
    pi = PodInfo(p)
    state = CycleState()
    fwk.run_pre_filter(state, pi)
    nl = NodeList.from_infos(cache, cache.node_infos())
    fwk.run_pre_score(state, pi, nl)
    if plugin in state.skip_score_plugins:
        return {n: 0 for n in nl.names}
    raw = np.asarray(pl.score_vector(state, pi, nl), np.int64) if hasattr(pl, "score_vector") else \
        np.asarray([pl.score(state, pi, i) for i in nl.infos], np.int64)
    if hasattr(pl, "score"):
        assert [pl.score(state, pi, i) for i in nl.infos] == raw.tolist()
    if hasattr(pl, "normalize_score"):
        raw = pl.normalize_score(state, pi, nl, raw)
    return dict(zip(nl.names, raw.tolist()))


# ---------------------------------------------------------------------------------------------------------------
# NodeUnschedulable, NodeName
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tolerations, want", [
    ([], "node(s) were unschedulable"),
    ([{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}], None),
    ([{"operator": "Exists"}], None),
])
def test_node_unschedulable(tolerations, want):
    got = filter_verdicts("NodeUnschedulable", [node("cordoned", unschedulable=True), node("ok")],
                          pod("p", tolerations=tolerations))
    assert got == {"cordoned": want, "ok": None}


def test_node_name():
    got = filter_verdicts("NodeName", [node("a"), node("b")], pod("p", node_name="b"))
    assert got == {"a": "node(s) didn't match the requested node name", "b": None}


# ---------------------------------------------------------------------------------------------------------------
# TaintToleration (also the node readiness check)
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("taints, tolerations, want", [
    ([taint("foo", "bar")], [], "node(s) had untolerated taint {foo: bar}"),
    ([taint("foo", "bar")], [{"key": "foo", "operator": "Equal", "value": "bar", "effect": "NoSchedule"}], None),
    ([taint("foo", "bar")], [{"key": "foo", "value": "bar"}], None),  # empty operator = Equal, empty effect = all
    ([taint("foo", "bar")], [{"key": "foo", "value": "baz"}], "node(s) had untolerated taint {foo: bar}"),
    ([taint("foo", "bar")], [{"key": "foo", "operator": "Exists"}], None),
    ([taint("foo", "bar")], [{"operator": "Exists"}], None),
    ([taint("foo", "bar")], [{"key": "foo", "operator": "Exists", "effect": "NoExecute"}],
     "node(s) had untolerated taint {foo: bar}"),
    ([taint("foo", "", "PreferNoSchedule")], [], None),
    ([taint("evict", "", "NoExecute")], [], "node(s) had untolerated taint {evict: }"),
    # node lifecycle taints are how NotReady / unreachable nodes drop out
    ([taint("node.kubernetes.io/not-ready")], [], "node(s) had untolerated taint {node.kubernetes.io/not-ready: }"),
    ([taint("node.kubernetes.io/unreachable", "", "NoExecute")],
     [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
       "tolerationSeconds": 300}], None),
])
def test_taint_toleration_filter(taints, tolerations, want):
    got = filter_verdicts("TaintToleration", [node("t", taints=taints), node("clean")],
                          pod("p", tolerations=tolerations))
    assert got == {"t": want, "clean": None}


def test_taint_toleration_score_counts_intolerable_prefer_no_schedule():
    pns = "PreferNoSchedule"
    nodes = [node("n0"), node("n1", taints=[taint("a", "", pns)]),
             node("n2", taints=[taint("a", "", pns), taint("b", "", pns)]),
             node("n3", taints=[taint("b", "", pns), taint("c", "", "NoSchedule")])]
    p = pod("p", tolerations=[{"key": "c", "operator": "Exists", "effect": "NoSchedule"}])
    assert scores("TaintToleration", nodes, p) == {"n0": 100, "n1": 50, "n2": 0, "n3": 50}
    # a toleration with an empty effect also tolerates PreferNoSchedule
    p2 = pod("p2", tolerations=[{"key": "b", "operator": "Exists"}])
    assert scores("TaintToleration", nodes, p2) == {"n0": 100, "n1": 0, "n2": 0, "n3": 100}


# ---------------------------------------------------------------------------------------------------------------
# NodeAffinity
# ---------------------------------------------------------------------------------------------------------------

def _required(*terms: dict) -> dict:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}}}


AFF_NODES = [node("a", labels={"zone": "z1", "gen": "3", "gpu": ""}), node("b", labels={"zone": "z2", "gen": "5"}),
             node("c", labels={"gen": "x"})]
MISMATCH = "node(s) didn't match Pod's node affinity/selector"


@pytest.mark.parametrize("spec, passing", [
    ({"nodeSelector": {"zone": "z1"}}, {"a"}),
    ({"nodeSelector": {"zone": "z1", "gen": "5"}}, set()),
    ({"affinity": _required({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1", "z2"]}]})},
     {"a", "b"}),
    ({"affinity": _required({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["z1"]}]})},
     {"b", "c"}),
    ({"affinity": _required({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]})}, {"a"}),
    ({"affinity": _required({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]})}, {"b", "c"}),
    ({"affinity": _required({"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["3"]}]})}, {"b"}),
    ({"affinity": _required({"matchExpressions": [{"key": "gen", "operator": "Lt", "values": ["4"]}]})}, {"a"}),
    # terms are ORed, expressions within a term ANDed
    ({"affinity": _required({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]},
                                                  {"key": "gen", "operator": "In", "values": ["5"]}]},
                            {"matchExpressions": [{"key": "gen", "operator": "In", "values": ["x"]}]})}, {"c"}),
    ({"affinity": _required({"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["a"]}]})},
     {"b", "c"}),
    # nodeSelector and affinity must both hold
    ({"nodeSelector": {"gen": "5"},
      "affinity": _required({"matchExpressions": [{"key": "zone", "operator": "Exists"}]})}, {"b"}),
    # an empty term matches nothing
    ({"affinity": _required({})}, set()),
])
def test_node_affinity_filter(spec, passing):
    got = filter_verdicts("NodeAffinity", AFF_NODES, pod("p", **spec))
    assert got == {n: (None if n in passing else MISMATCH) for n in ("a", "b", "c")}


def test_node_affinity_metadata_name_narrows_nodes_in_prefilter():
    cache, sched = cluster(*AFF_NODES)
    fwk = sched.frameworks["default-scheduler"]
    p = PodInfo(pod("p", affinity=_required(
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b", "zz"]}]})))
    res, st = fwk.all_plugins["NodeAffinity"].pre_filter(CycleState(), p)
    assert st is None and res == PreFilterResult({"b", "zz"})
    r = sched.schedule_one(p)
    assert r.suggested_host == "b"


def test_node_affinity_preferred_score():
    pref = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 2, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}]}},
        {"weight": 6, "preference": {"matchExpressions": [{"key": "gen", "operator": "Exists"}]}},
    ]}}
    assert scores("NodeAffinity", AFF_NODES, pod("p", affinity=pref)) == {"a": 100, "b": 75, "c": 75}


# ---------------------------------------------------------------------------------------------------------------
# NodeResourcesFit
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("request_, existing_cpu, want", [
    ({"cpu": "1", "memory": "1Gi"}, "500m", None),
    ({"cpu": "2", "memory": "1Gi"}, "500m", "Insufficient cpu"),
    ({"cpu": "1", "memory": "3Gi"}, "500m", "Insufficient memory"),
    ({"cpu": "3", "memory": "3Gi"}, "0", "Insufficient cpu, Insufficient memory"),
    ({"cpu": "1", "memory": "1Gi", "example.com/gpu": "1"}, "0", "Insufficient example.com/gpu"),
    ({"cpu": "1", "memory": "1Gi", "ephemeral-storage": "1Gi"}, "0", "Insufficient ephemeral-storage"),
])
def test_fit_filter(request_, existing_cpu, want):
    nodes = [node("n", cpu="2", memory="2Gi")]
    existing = (pod("e", cpu=existing_cpu, memory=None, node_name="n"),)
    p = pod("p", cpu=None, memory=None, requests=request_)
    assert filter_verdicts("NodeResourcesFit", nodes, p, existing) == {"n": want}


def test_fit_too_many_pods_and_unresolvable_when_over_allocatable():
    cache, sched = cluster(node("full", pods="1"), node("small", cpu="1"),
                           pods=(pod("e", node_name="full"),))
    fwk = sched.frameworks["default-scheduler"]
    pl = fwk.all_plugins["NodeResourcesFit"]
    pi = PodInfo(pod("p", cpu="2"))
    st = CycleState()
    pl.pre_filter(st, pi)
    full = pl.filter(st, pi, cache.node_info("full"))
    small = pl.filter(st, pi, cache.node_info("small"))
    assert full.reasons == ("Too many pods",) and full.code.name == "UNSCHEDULABLE"
    # 2 CPUs on a 1-CPU node can never fit: preemption must not consider it
    assert small.reasons == ("Insufficient cpu",) and small.code.name == "UNSCHEDULABLE_AND_UNRESOLVABLE"


def test_fit_ignored_extended_resources():
    cfg = """
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- pluginConfig:
  - name: NodeResourcesFit
    args: {ignoredResourceGroups: [example.com]}
"""
    from controlplane.scheduler.config import load_config
    cache, sched = cluster(node("n"), config=load_config(cfg))
    assert sched.schedule_one(pod("p", requests={"example.com/gpu": "1"})).suggested_host == "n"


SCORE_NODES = [node("n1", cpu="4000m", memory="10000"), node("n2", cpu="6000m", memory="10000")]
SCORE_POD = pod("p", cpu="3000m", memory="5000")


@pytest.mark.parametrize("strategy, want", [
    ({"type": "LeastAllocated"}, {"n1": 37, "n2": 50}),
    ({"type": "MostAllocated"}, {"n1": 62, "n2": 50}),
    ({"type": "RequestedToCapacityRatio",
      "requestedToCapacityRatio": {"shape": [{"utilization": 0, "score": 10}, {"utilization": 100, "score": 0}]}},
     {"n1": 38, "n2": 50}),
    ({"type": "RequestedToCapacityRatio",
      "requestedToCapacityRatio": {"shape": [{"utilization": 0, "score": 0}, {"utilization": 100, "score": 10}]}},
     {"n1": 63, "n2": 50}),
])
def test_fit_scoring_strategies(strategy, want):
    from controlplane.scheduler.config import parse_config
    strategy = {**strategy, "resources": [{"name": "cpu", "weight": 1}, {"name": "memory", "weight": 1}]}
    cfg = parse_config({"profiles": [{"pluginConfig": [{"name": "NodeResourcesFit",
                                                         "args": {"scoringStrategy": strategy}}]}]})
    assert scores("NodeResourcesFit", SCORE_NODES, SCORE_POD, config=cfg) == want


def test_fit_least_allocated_uses_non_zero_requests_for_request_less_pods():
    nodes = [node("busy", cpu="1", memory="1Gi"), node("idle", cpu="1", memory="1Gi")]
    existing = (pod("e", cpu=None, memory=None, node_name="busy"),)  # counts as 100m / 200Mi for scoring
    got = scores("NodeResourcesFit", nodes, pod("p", cpu=None, memory=None), existing)
    assert got["idle"] > got["busy"]


def test_balanced_allocation():
    assert scores("NodeResourcesBalancedAllocation", SCORE_NODES, SCORE_POD) == {"n1": 87, "n2": 100}


def test_balanced_allocation_skips_best_effort_pods():
    assert scores("NodeResourcesBalancedAllocation", SCORE_NODES, pod("p", cpu=None, memory=None)) == \
        {"n1": 0, "n2": 0}


# ---------------------------------------------------------------------------------------------------------------
# NodePorts
# ---------------------------------------------------------------------------------------------------------------

def _ports(*ports: dict) -> dict:
    return {"containers": [{"name": "c", "image": "x", "ports": list(ports)}]}


@pytest.mark.parametrize("used, wanted, conflict", [
    ({"hostPort": 8080, "containerPort": 80}, {"hostPort": 8080, "containerPort": 80}, True),
    ({"hostPort": 8080, "containerPort": 80}, {"hostPort": 8081, "containerPort": 80}, False),
    ({"hostPort": 8080, "containerPort": 80, "protocol": "UDP"}, {"hostPort": 8080, "containerPort": 80}, False),
    ({"hostPort": 8080, "containerPort": 80, "hostIP": "127.0.0.1"},
     {"hostPort": 8080, "containerPort": 80, "hostIP": "127.0.0.2"}, False),
    ({"hostPort": 8080, "containerPort": 80, "hostIP": "127.0.0.1"},
     {"hostPort": 8080, "containerPort": 80}, True),  # 0.0.0.0 conflicts with every IP
    ({"hostPort": 8080, "containerPort": 80},
     {"hostPort": 8080, "containerPort": 80, "hostIP": "10.0.0.1"}, True),
])
def test_node_ports(used, wanted, conflict):
    existing = (pod("e", node_name="n1", **_ports(used)),)
    got = filter_verdicts("NodePorts", [node("n1"), node("n2")], pod("p", **_ports(wanted)), existing)
    assert got == {"n1": "node(s) didn't have free ports for the requested pod ports" if conflict else None,
                   "n2": None}


# ---------------------------------------------------------------------------------------------------------------
# ImageLocality
# ---------------------------------------------------------------------------------------------------------------

def test_image_locality():
    mb = 1024 * 1024
    nodes = [node("n1", images=[(["img:1"], 500 * mb)]), node("n2", images=[(["other:1"], 900 * mb)])]
    got = scores("ImageLocality", nodes, pod("p", image="img:1"))
    assert got == {"n1": 100 * (250 * mb - 23 * mb) // (1000 * mb - 23 * mb), "n2": 0}
    # an image without a tag means :latest
    nodes = [node("n1", images=[(["repo/img:latest"], 2000 * mb)]), node("n2")]
    assert scores("ImageLocality", nodes, pod("p", image="repo/img"))["n1"] > 0


# ---------------------------------------------------------------------------------------------------------------
# InterPodAffinity
# ---------------------------------------------------------------------------------------------------------------

IPA_NODES = [node("n1", labels={ZONE: "a"}), node("n2", labels={ZONE: "a"}), node("n3", labels={ZONE: "b"}),
             node("n4")]


def _term(labels: dict, key: str, **kw: Any) -> dict:
    return {"labelSelector": {"matchLabels": labels}, "topologyKey": key, **kw}


def _aff(kind: str, *terms: dict) -> dict:
    return {kind: {"requiredDuringSchedulingIgnoredDuringExecution": list(terms)}}


def test_required_affinity():
    existing = (pod("db", labels={"app": "db"}, node_name="n1"),)
    got = filter_verdicts("InterPodAffinity", IPA_NODES, pod("p", affinity=_aff("podAffinity", _term({"app": "db"}, ZONE))),
                          existing)
    bad = "node(s) didn't match pod affinity rules"
    assert got == {"n1": None, "n2": None, "n3": bad, "n4": bad}


def test_required_affinity_first_pod_of_a_group_may_match_itself():
    p = pod("p", labels={"app": "db"}, affinity=_aff("podAffinity", _term({"app": "db"}, ZONE)))
    got = filter_verdicts("InterPodAffinity", IPA_NODES, p)
    assert got == {"n1": None, "n2": None, "n3": None, "n4": "node(s) didn't match pod affinity rules"}


def test_required_anti_affinity():
    existing = (pod("web", labels={"app": "web"}, node_name="n1"),)
    p = pod("p", affinity=_aff("podAntiAffinity", _term({"app": "web"}, ZONE)))
    bad = "node(s) didn't match pod anti-affinity rules"
    assert filter_verdicts("InterPodAffinity", IPA_NODES, p, existing) == {"n1": bad, "n2": bad, "n3": None, "n4": None}


def test_existing_pods_anti_affinity_is_symmetric():
    existing = (pod("loner", node_name="n1", affinity=_aff("podAntiAffinity", _term({"app": "web"}, ZONE))),)
    bad = "node(s) didn't satisfy existing pods anti-affinity rules"
    got = filter_verdicts("InterPodAffinity", IPA_NODES, pod("p", labels={"app": "web"}), existing)
    assert got == {"n1": bad, "n2": bad, "n3": None, "n4": None}
    # other namespace: the existing term defaults to its own namespace, so it doesn't apply
    got = filter_verdicts("InterPodAffinity", IPA_NODES, pod("p", ns="other", labels={"app": "web"}), existing)
    assert set(got.values()) == {None}


def test_namespace_selector_uses_namespace_labels():
    existing = (pod("db", ns="team-x", labels={"app": "db"}, node_name="n3"),)
    term = _term({"app": "db"}, ZONE, namespaceSelector={"matchLabels": {"team": "x"}})
    p = pod("p", affinity=_aff("podAffinity", term))
    got = filter_verdicts("InterPodAffinity", IPA_NODES, p, existing,
                          namespaces={"team-x": {"team": "x"}, "default": {}})
    bad = "node(s) didn't match pod affinity rules"
    assert got == {"n1": bad, "n2": bad, "n3": None, "n4": bad}
    # an empty namespaceSelector selects every namespace
    term = _term({"app": "db"}, ZONE, namespaceSelector={})
    got = filter_verdicts("InterPodAffinity", IPA_NODES, pod("p", affinity=_aff("podAffinity", term)), existing)
    assert got["n3"] is None and got["n1"] == bad


def test_preferred_affinity_and_anti_affinity_scores():
    existing = (pod("db", labels={"app": "db"}, node_name="n1"), pod("web", labels={"app": "web"}, node_name="n3"))
    pref = {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 10, "podAffinityTerm": _term({"app": "db"}, ZONE)}]},
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 5, "podAffinityTerm": _term({"app": "web"}, "kubernetes.io/hostname")}]}}
    got = scores("InterPodAffinity", IPA_NODES, pod("p", affinity=pref), existing)
    # raw: n1 = n2 = 10 (zone a), n3 = -5, n4 = 0 -> min-max normalised
    assert got == {"n1": 100, "n2": 100, "n3": 0, "n4": 33}


def test_existing_pods_required_affinity_attracts_matching_pods():
    existing = (pod("fan", node_name="n3", affinity=_aff("podAffinity", _term({"app": "star"}, ZONE))),)
    got = scores("InterPodAffinity", IPA_NODES, pod("p", labels={"app": "star"}), existing)
    assert got == {"n1": 0, "n2": 0, "n3": 100, "n4": 0}


# ---------------------------------------------------------------------------------------------------------------
# PodTopologySpread
# ---------------------------------------------------------------------------------------------------------------

PTS_NODES = [node("a1", labels={ZONE: "a"}), node("a2", labels={ZONE: "a"}), node("b1", labels={ZONE: "b"}),
             node("nozone")]


def _spread(max_skew: int = 1, when: str = "DoNotSchedule", **kw: Any) -> dict:
    return {"topologySpreadConstraints": [{"maxSkew": max_skew, "topologyKey": ZONE, "whenUnsatisfiable": when,
                                           "labelSelector": {"matchLabels": {"app": "s"}}, **kw}]}


def test_spread_max_skew():
    existing = (pod("e1", labels={"app": "s"}, node_name="a1"), pod("e2", labels={"app": "s"}, node_name="a2"))
    got = filter_verdicts("PodTopologySpread", PTS_NODES, pod("p", labels={"app": "s"}, **_spread()), existing)
    assert got == {"a1": "node(s) didn't match pod topology spread constraints",
                   "a2": "node(s) didn't match pod topology spread constraints", "b1": None,
                   "nozone": "node(s) didn't match pod topology spread constraints (missing required label)"}


def test_spread_min_domains_treats_global_minimum_as_zero():
    existing = (pod("e1", labels={"app": "s"}, node_name="a1"), pod("e2", labels={"app": "s"}, node_name="b1"))
    p = pod("p", labels={"app": "s"}, **_spread(minDomains=3))
    got = filter_verdicts("PodTopologySpread", PTS_NODES, p, existing)
    assert got["a1"] == got["b1"] == "node(s) didn't match pod topology spread constraints"
    p = pod("p", labels={"app": "s"}, **_spread(minDomains=2))
    assert filter_verdicts("PodTopologySpread", PTS_NODES, p, existing)["b1"] is None


def test_spread_node_affinity_policy():
    # zone b is excluded by the pod's nodeSelector: with Honor it isn't a domain, so zone a's count is the minimum
    existing = (pod("e1", labels={"app": "s"}, node_name="a1"),)
    honor = pod("p", labels={"app": "s"}, nodeSelector={ZONE: "a"}, **_spread())
    assert filter_verdicts("PodTopologySpread", PTS_NODES, honor, existing)["a2"] is None
    ignore = pod("p", labels={"app": "s"}, nodeSelector={ZONE: "a"}, **_spread(nodeAffinityPolicy="Ignore"))
    assert filter_verdicts("PodTopologySpread", PTS_NODES, ignore, existing)["a2"] is not None


def test_spread_terminating_and_other_namespace_pods_do_not_count():
    e1 = pod("e1", labels={"app": "s"}, node_name="a1")
    e1["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    e2 = pod("e2", ns="other", labels={"app": "s"}, node_name="a1")
    got = filter_verdicts("PodTopologySpread", PTS_NODES, pod("p", labels={"app": "s"}, **_spread()), (e1, e2))
    assert got["a1"] is None


def test_spread_schedule_anyway_scores_emptier_domains_higher():
    existing = (pod("e1", labels={"app": "s"}, node_name="a1"), pod("e2", labels={"app": "s"}, node_name="a2"))
    got = scores("PodTopologySpread", PTS_NODES[:3], pod("p", labels={"app": "s"}, **_spread(when="ScheduleAnyway")),
                 existing)
    assert got["b1"] == 100 and got["a1"] == got["a2"] < 100


def test_spread_system_defaults_apply_to_service_pods_only():
    nodes = [node("a1", labels={ZONE: "a"}), node("b1", labels={ZONE: "b"})]
    existing = (pod("e1", labels={"app": "s"}, node_name="a1"), pod("e2", labels={"app": "s"}, node_name="a1"))
    plain = scores("PodTopologySpread", nodes, pod("p", labels={"app": "s"}), existing)
    assert plain == {"a1": 0, "b1": 0}  # skipped: nothing selects the pod
    cache, sched = cluster(*nodes, pods=existing)
    cache.upsert_object("Service", {"metadata": {"name": "svc", "namespace": "default"},
                                    "spec": {"selector": {"app": "s"}}})
    fwk = sched.frameworks["default-scheduler"]
    pl = fwk.all_plugins["PodTopologySpread"]
    pi = PodInfo(pod("p", labels={"app": "s"}))
    st = CycleState()
    nl = NodeList.from_infos(cache, cache.node_infos())
    assert pl.pre_score(st, pi, nl) is None
    out = pl.normalize_score(st, pi, nl, pl.score_vector(st, pi, nl))
    assert out[nl.names.index("b1")] > out[nl.names.index("a1")]
