"""KubeSchedulerConfiguration loading: defaults, plugin merging as upstream, pluginConfig, extenders, validation."""

from __future__ import annotations

import pytest
from scheduler_builders import cluster, node

from controlplane.scheduler.config import (
    ConfigError,
    default_configuration,
    load_config,
    parse_duration,
)

FULL = """
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
percentageOfNodesToScore: 30
podInitialBackoffSeconds: 2
podMaxBackoffSeconds: 20
profiles:
- schedulerName: default-scheduler
- schedulerName: bin-packer
  percentageOfNodesToScore: 100
  plugins:
    score:
      disabled:
      - name: NodeResourcesBalancedAllocation
      - name: ImageLocality
      enabled:
      - name: NodeResourcesFit
        weight: 5
    preFilter:
      disabled:
      - name: "*"
  pluginConfig:
  - name: NodeResourcesFit
    args:
      apiVersion: kubescheduler.config.k8s.io/v1
      kind: NodeResourcesFitArgs
      scoringStrategy:
        type: MostAllocated
        resources: [{name: cpu, weight: 1}]
extenders:
- urlPrefix: http://127.0.0.1:8888/scheduler
  filterVerb: filter
  prioritizeVerb: prioritize
  weight: 3
  httpTimeout: 1m30s
  nodeCacheCapable: true
  ignorable: true
  managedResources:
  - name: example.com/foo
    ignoredByScheduler: true
"""


def test_load_full_config(tmp_path):
    path = tmp_path / "sched.yaml"
    path.write_text(FULL)
    cfg = load_config(path)
    assert cfg.percentage_of_nodes_to_score == 30
    assert (cfg.pod_initial_backoff_seconds, cfg.pod_max_backoff_seconds) == (2, 20)
    assert [p.scheduler_name for p in cfg.profiles] == ["default-scheduler", "bin-packer"]
    packer = cfg.profile("bin-packer")
    assert packer.percentage_of_nodes_to_score == 100
    assert packer.plugin_config["NodeResourcesFit"]["scoringStrategy"]["type"] == "MostAllocated"
    (ext,) = cfg.extenders
    assert ext.http_timeout == 90 and ext.node_cache_capable and ext.ignorable and ext.weight == 3
    assert ext.managed_resources[0].name == "example.com/foo" and ext.managed_resources[0].ignored_by_scheduler


def test_profiles_build_frameworks_with_merged_plugins():
    cache, sched = cluster(node("n"), config=load_config(FULL))
    default = sched.frameworks["default-scheduler"]
    packer = sched.frameworks["bin-packer"]
    assert [p.name for p in default.score_plugins] == [
        "TaintToleration", "NodeAffinity", "NodeResourcesFit", "PodTopologySpread", "InterPodAffinity",
        "NodeResourcesBalancedAllocation", "ImageLocality"]
    assert default.score_weights == {"TaintToleration": 3, "NodeAffinity": 2, "NodeResourcesFit": 1,
                                     "PodTopologySpread": 2, "InterPodAffinity": 2,
                                     "NodeResourcesBalancedAllocation": 1, "ImageLocality": 1}
    # a MultiPoint plugin re-configured at a specific point overrides it there and runs first (upstream's order:
    # overrides, then MultiPoint, then the point's other plugins), with the explicit weight
    assert [p.name for p in packer.score_plugins] == ["NodeResourcesFit", "TaintToleration", "NodeAffinity",
                                                      "PodTopologySpread", "InterPodAffinity"]
    assert packer.score_weights["NodeResourcesFit"] == 5
    assert packer.pre_filter_plugins == []  # "*" disables every default of that point
    assert packer.all_plugins["NodeResourcesFit"].strategy == "MostAllocated"
    assert packer.percentage_of_nodes_to_score == 100


def test_multi_point_custom_plugins_and_disable():
    cfg = load_config("""
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- plugins:
    multiPoint:
      disabled: [{name: ImageLocality}, {name: TaintToleration}]
    filter:
      enabled: [{name: TaintToleration}]
""")
    _, sched = cluster(node("n"), config=cfg)
    f = sched.frameworks["default-scheduler"]
    assert "ImageLocality" not in [p.name for p in f.score_plugins]
    assert "TaintToleration" not in [p.name for p in f.score_plugins]
    # enabled only at filter: after the MultiPoint plugins, as upstream orders "other" plugins
    assert [p.name for p in f.filter_plugins][-1] == "TaintToleration"


@pytest.mark.parametrize("doc, message", [
    ("apiVersion: kubescheduler.config.k8s.io/v1beta1\nkind: KubeSchedulerConfiguration\n", "apiVersion"),
    ("percentageOfNodesToScore: 101\n", "percentageOfNodesToScore"),
    ("podInitialBackoffSeconds: 0\n", "podInitialBackoffSeconds"),
    ("podInitialBackoffSeconds: 5\npodMaxBackoffSeconds: 2\n", "podMaxBackoffSeconds"),
    ("profiles: [{schedulerName: a}, {schedulerName: a}]\n", "Duplicate value"),
    ("profiles: [{plugins: {scoring: {}}}]\n", "unknown extension point"),
    ("profiles: [{pluginConfig: [{name: A}, {name: A}]}]\n", "Duplicate value"),
    ("extenders: [{filterVerb: f}]\n", "urlPrefix"),
    ("extenders: [{urlPrefix: 'http://x', prioritizeVerb: p, weight: 0}]\n", "positive weight"),
    ("extenders: [{urlPrefix: 'http://x', bindVerb: b}, {urlPrefix: 'http://y', bindVerb: b}]\n", "implementing bind"),
    ("profiles: [{schedulerName: a, plugins: {queueSort: {enabled: [{name: X}], disabled: [{name: '*'}]}}}, "
     "{schedulerName: b}]\n", "queueSort"),
])
def test_validation_errors(doc, message):
    with pytest.raises(ConfigError, match=message):
        load_config(doc)


def test_unknown_plugin_fails_when_building():
    from controlplane.scheduler.framework import FrameworkError
    cfg = load_config("profiles: [{plugins: {filter: {enabled: [{name: NoSuchPlugin}]}}}]\n")
    with pytest.raises(FrameworkError, match="NoSuchPlugin"):
        cluster(node("n"), config=cfg)


def test_defaults():
    cfg = default_configuration()
    assert cfg.percentage_of_nodes_to_score == 0
    assert (cfg.pod_initial_backoff_seconds, cfg.pod_max_backoff_seconds) == (1, 10)
    assert [p.scheduler_name for p in cfg.profiles] == ["default-scheduler"]


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("1m30s", 90), ("500ms", 0.5), ("2h", 7200), (5, 5)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds
