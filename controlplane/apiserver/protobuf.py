"""Decode Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`) into the JSON the API serves.

kubectl's typed generators (`kubectl create deployment|service|job|...`) and client-go tools send request bodies
as protobuf, not JSON. This module reads the proto2 wire format directly from compact per-message field tables (no
protobuf library, no generated code) and renders each object as Go's encoding/json renders the same struct, so the
rest of the server sees exactly what the JSON path would have produced; responses stay JSON.
"""

from __future__ import annotations

import base64
import datetime as _dt
import logging
import struct
from collections.abc import Callable, Iterator
from typing import Any

from controlplane.apiserver import jsonutil

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"


class ProtobufError(Exception):
    """The body could not be turned into a JSON object."""


class MalformedProtobuf(ProtobufError):
    """The bytes are not a well-formed Kubernetes protobuf envelope or message (a client error: 400)."""


class UnsupportedProtobuf(ProtobufError):
    """Well-formed, but a kind or field this decoder has no table for (415: the client can resend it as JSON)."""


# ------------------------------------------------------------------------------------------------- field tables
#
# Each message maps a field number to (json name, type). Field numbers are facts of the Kubernetes API (the
# upstream generated.proto files); JSON names are the Go json tags, which usually but not always equal the proto
# field names (BoundObjectReference's `uID` is `uid` in JSON). Types:
#   "string" | "bytes" (base64 in JSON) | "double"
#   "int" | "bool"   -- a pointer field or one without omitempty: kept as sent, zero included
#   "int?" | "bool?" -- a non-pointer Go field with omitempty: its zero is dropped, as encoding/json would. This
#                       matters because Go's protobuf marshaller always writes non-pointer fields, zeros included.
#   any other name   -- a nested message from _MESSAGES or one of the special upstream types in _SPECIAL
#   "[]T"            -- repeated T;  "{}T" -- map<string, T> (entries are messages with key=1, value=2)
# A json name of "" marks a Go struct embedded with `json:",inline"`: its fields are merged into the parent.
# A type of None marks a field upstream has but this decoder does not: its presence is an UnsupportedProtobuf
# rather than a silent loss of what the user asked for. Field numbers missing from a table entirely (fields newer
# than the table) are skipped with a debug log, as upstream drops unknown fields.
# Every empty string is dropped: nearly every Go string field is omitempty, and a validation error for a missing
# field reads the same as one for an empty field.

Field = tuple[str, str | None]

_META: dict[str, dict[int, Field]] = {
    "ObjectMeta": {
        1: ("name", "string"), 2: ("generateName", "string"), 3: ("namespace", "string"),
        4: ("selfLink", "string"), 5: ("uid", "string"), 6: ("resourceVersion", "string"),
        7: ("generation", "int?"), 8: ("creationTimestamp", "Time"), 9: ("deletionTimestamp", "Time"),
        10: ("deletionGracePeriodSeconds", "int"), 11: ("labels", "{}string"), 12: ("annotations", "{}string"),
        13: ("ownerReferences", "[]OwnerReference"), 14: ("finalizers", "[]string"),
        17: ("managedFields", "[]ManagedFieldsEntry"),
    },
    "OwnerReference": {
        5: ("apiVersion", "string"), 1: ("kind", "string"), 3: ("name", "string"), 4: ("uid", "string"),
        6: ("controller", "bool"), 7: ("blockOwnerDeletion", "bool"),
    },
    "ManagedFieldsEntry": {
        1: ("manager", "string"), 2: ("operation", "string"), 3: ("apiVersion", "string"), 4: ("time", "Time"),
        6: ("fieldsType", "string"), 7: ("fieldsV1", "FieldsV1"), 8: ("subresource", "string"),
    },
    "LabelSelector": {1: ("matchLabels", "{}string"), 2: ("matchExpressions", "[]LabelSelectorRequirement")},
    "LabelSelectorRequirement": {1: ("key", "string"), 2: ("operator", "string"), 3: ("values", "[]string")},
    "FieldSelectorRequirement": {1: ("key", "string"), 2: ("operator", "string"), 3: ("values", "[]string")},
    "Condition": {
        1: ("type", "string"), 2: ("status", "string"), 3: ("observedGeneration", "int?"),
        4: ("lastTransitionTime", "Time"), 5: ("reason", "string"), 6: ("message", "string"),
    },
    "DeleteOptions": {
        1: ("gracePeriodSeconds", "int"), 2: ("preconditions", "Preconditions"), 3: ("orphanDependents", "bool"),
        4: ("propagationPolicy", "string"), 5: ("dryRun", "[]string"),
        6: ("ignoreStoreReadErrorWithClusterBreakingPotential", "bool"),
    },
    "Preconditions": {1: ("uid", "string"), 2: ("resourceVersion", "string")},
}

_CORE: dict[str, dict[int, Field]] = {
    "ConfigMap": {1: ("metadata", "ObjectMeta"), 4: ("immutable", "bool"), 2: ("data", "{}string"),
                  3: ("binaryData", "{}bytes")},
    "Secret": {1: ("metadata", "ObjectMeta"), 5: ("immutable", "bool"), 2: ("data", "{}bytes"),
               4: ("stringData", "{}string"), 3: ("type", "string")},
    "Namespace": {1: ("metadata", "ObjectMeta"), 2: ("spec", "NamespaceSpec"), 3: ("status", "NamespaceStatus")},
    "NamespaceSpec": {1: ("finalizers", "[]string")},
    "NamespaceStatus": {1: ("phase", "string"), 2: ("conditions", "[]NamespaceCondition")},
    "NamespaceCondition": {1: ("type", "string"), 2: ("status", "string"), 4: ("lastTransitionTime", "Time"),
                           5: ("reason", "string"), 6: ("message", "string")},
    "ServiceAccount": {1: ("metadata", "ObjectMeta"), 2: ("secrets", "[]ObjectReference"),
                       3: ("imagePullSecrets", "[]LocalObjectReference"), 4: ("automountServiceAccountToken", "bool")},
    "ObjectReference": {1: ("kind", "string"), 2: ("namespace", "string"), 3: ("name", "string"), 4: ("uid", "string"),
                        5: ("apiVersion", "string"), 6: ("resourceVersion", "string"), 7: ("fieldPath", "string")},
    "LocalObjectReference": {1: ("name", "string")},
    "TypedLocalObjectReference": {1: ("apiGroup", "string"), 2: ("kind", "string"), 3: ("name", "string")},
    "Binding": {1: ("metadata", "ObjectMeta"), 2: ("target", "ObjectReference")},
    # Service
    "Service": {1: ("metadata", "ObjectMeta"), 2: ("spec", "ServiceSpec"), 3: ("status", "ServiceStatus")},
    "ServiceSpec": {
        1: ("ports", "[]ServicePort"), 2: ("selector", "{}string"), 3: ("clusterIP", "string"),
        18: ("clusterIPs", "[]string"), 4: ("type", "string"), 5: ("externalIPs", "[]string"),
        7: ("sessionAffinity", "string"), 8: ("loadBalancerIP", "string"), 9: ("loadBalancerSourceRanges", "[]string"),
        10: ("externalName", "string"), 11: ("externalTrafficPolicy", "string"), 12: ("healthCheckNodePort", "int?"),
        13: ("publishNotReadyAddresses", "bool?"), 14: ("sessionAffinityConfig", "SessionAffinityConfig"),
        19: ("ipFamilies", "[]string"), 17: ("ipFamilyPolicy", "string"),
        20: ("allocateLoadBalancerNodePorts", "bool"), 21: ("loadBalancerClass", "string"),
        22: ("internalTrafficPolicy", "string"), 23: ("trafficDistribution", "string"),
    },
    "ServicePort": {1: ("name", "string"), 2: ("protocol", "string"), 6: ("appProtocol", "string"),
                    3: ("port", "int"), 4: ("targetPort", "IntOrString"), 5: ("nodePort", "int?")},
    "SessionAffinityConfig": {1: ("clientIP", "ClientIPConfig")},
    "ClientIPConfig": {1: ("timeoutSeconds", "int")},
    "ServiceStatus": {1: ("loadBalancer", "LoadBalancerStatus"), 2: ("conditions", "[]Condition")},
    "LoadBalancerStatus": {1: ("ingress", "[]LoadBalancerIngress")},
    "LoadBalancerIngress": {1: ("ip", "string"), 2: ("hostname", "string"), 3: ("ipMode", "string"),
                            4: ("ports", "[]PortStatus")},
    "PortStatus": {1: ("port", "int"), 2: ("protocol", "string"), 3: ("error", "string")},
    # ResourceQuota
    "ResourceQuota": {1: ("metadata", "ObjectMeta"), 2: ("spec", "ResourceQuotaSpec"),
                      3: ("status", "ResourceQuotaStatus")},
    "ResourceQuotaSpec": {1: ("hard", "{}Quantity"), 2: ("scopes", "[]string"), 3: ("scopeSelector", "ScopeSelector")},
    "ResourceQuotaStatus": {1: ("hard", "{}Quantity"), 2: ("used", "{}Quantity")},
    "ScopeSelector": {1: ("matchExpressions", "[]ScopedResourceSelectorRequirement")},
    "ScopedResourceSelectorRequirement": {1: ("scopeName", "string"), 2: ("operator", "string"),
                                          3: ("values", "[]string")},
    # Pod
    "Pod": {1: ("metadata", "ObjectMeta"), 2: ("spec", "PodSpec"), 3: ("status", "PodStatus")},
    "PodTemplateSpec": {1: ("metadata", "ObjectMeta"), 2: ("spec", "PodSpec")},
    "PodSpec": {
        1: ("volumes", "[]Volume"), 20: ("initContainers", "[]Container"), 2: ("containers", "[]Container"),
        34: ("ephemeralContainers", "[]EphemeralContainer"), 3: ("restartPolicy", "string"),
        4: ("terminationGracePeriodSeconds", "int"), 5: ("activeDeadlineSeconds", "int"), 6: ("dnsPolicy", "string"),
        7: ("nodeSelector", "{}string"), 8: ("serviceAccountName", "string"), 9: ("serviceAccount", "string"),
        21: ("automountServiceAccountToken", "bool"), 10: ("nodeName", "string"), 11: ("hostNetwork", "bool?"),
        12: ("hostPID", "bool?"), 13: ("hostIPC", "bool?"), 27: ("shareProcessNamespace", "bool"),
        14: ("securityContext", "PodSecurityContext"), 15: ("imagePullSecrets", "[]LocalObjectReference"),
        16: ("hostname", "string"), 17: ("subdomain", "string"), 18: ("affinity", "Affinity"),
        19: ("schedulerName", "string"), 22: ("tolerations", "[]Toleration"), 23: ("hostAliases", "[]HostAlias"),
        24: ("priorityClassName", "string"), 25: ("priority", "int"), 26: ("dnsConfig", "PodDNSConfig"),
        28: ("readinessGates", "[]PodReadinessGate"), 29: ("runtimeClassName", "string"),
        30: ("enableServiceLinks", "bool"), 31: ("preemptionPolicy", "string"), 32: ("overhead", "{}Quantity"),
        33: ("topologySpreadConstraints", "[]TopologySpreadConstraint"), 35: ("setHostnameAsFQDN", "bool"),
        36: ("os", "PodOS"), 37: ("hostUsers", "bool"), 38: ("schedulingGates", "[]PodSchedulingGate"),
        39: ("resourceClaims", "[]PodResourceClaim"), 40: ("resources", "ResourceRequirements"),
    },
    "Container": {
        1: ("name", "string"), 2: ("image", "string"), 3: ("command", "[]string"), 4: ("args", "[]string"),
        5: ("workingDir", "string"), 6: ("ports", "[]ContainerPort"), 19: ("envFrom", "[]EnvFromSource"),
        7: ("env", "[]EnvVar"), 8: ("resources", "ResourceRequirements"),
        23: ("resizePolicy", "[]ContainerResizePolicy"), 24: ("restartPolicy", "string"),
        9: ("volumeMounts", "[]VolumeMount"), 21: ("volumeDevices", "[]VolumeDevice"),
        10: ("livenessProbe", "Probe"), 11: ("readinessProbe", "Probe"), 22: ("startupProbe", "Probe"),
        12: ("lifecycle", "Lifecycle"), 13: ("terminationMessagePath", "string"),
        20: ("terminationMessagePolicy", "string"), 14: ("imagePullPolicy", "string"),
        15: ("securityContext", "SecurityContext"), 16: ("stdin", "bool?"), 17: ("stdinOnce", "bool?"),
        18: ("tty", "bool?"),
    },
    # EphemeralContainerCommon has Container's field numbers and names exactly, so Container's table serves.
    "EphemeralContainer": {1: ("", "Container"), 2: ("targetContainerName", "string")},
    "ContainerPort": {1: ("name", "string"), 2: ("hostPort", "int?"), 3: ("containerPort", "int"),
                      4: ("protocol", "string"), 5: ("hostIP", "string")},
    "ContainerResizePolicy": {1: ("resourceName", "string"), 2: ("restartPolicy", "string")},
    "EnvVar": {1: ("name", "string"), 2: ("value", "string"), 3: ("valueFrom", "EnvVarSource")},
    "EnvVarSource": {1: ("fieldRef", "ObjectFieldSelector"), 2: ("resourceFieldRef", "ResourceFieldSelector"),
                     3: ("configMapKeyRef", "ConfigMapKeySelector"), 4: ("secretKeyRef", "SecretKeySelector")},
    "ObjectFieldSelector": {1: ("apiVersion", "string"), 2: ("fieldPath", "string")},
    "ResourceFieldSelector": {1: ("containerName", "string"), 2: ("resource", "string"), 3: ("divisor", "Quantity")},
    "ConfigMapKeySelector": {1: ("", "LocalObjectReference"), 2: ("key", "string"), 3: ("optional", "bool")},
    "SecretKeySelector": {1: ("", "LocalObjectReference"), 2: ("key", "string"), 3: ("optional", "bool")},
    "EnvFromSource": {1: ("prefix", "string"), 2: ("configMapRef", "ConfigMapEnvSource"),
                      3: ("secretRef", "SecretEnvSource")},
    "ConfigMapEnvSource": {1: ("", "LocalObjectReference"), 2: ("optional", "bool")},
    "SecretEnvSource": {1: ("", "LocalObjectReference"), 2: ("optional", "bool")},
    "ResourceRequirements": {1: ("limits", "{}Quantity"), 2: ("requests", "{}Quantity"),
                             3: ("claims", "[]ResourceClaim")},
    "ResourceClaim": {1: ("name", "string"), 2: ("request", "string")},
    "VolumeMount": {1: ("name", "string"), 2: ("readOnly", "bool?"), 7: ("recursiveReadOnly", "string"),
                    3: ("mountPath", "string"), 4: ("subPath", "string"), 5: ("mountPropagation", "string"),
                    6: ("subPathExpr", "string")},
    "VolumeDevice": {1: ("name", "string"), 2: ("devicePath", "string")},
    "Probe": {1: ("", "ProbeHandler"), 2: ("initialDelaySeconds", "int?"), 3: ("timeoutSeconds", "int?"),
              4: ("periodSeconds", "int?"), 5: ("successThreshold", "int?"), 6: ("failureThreshold", "int?"),
              7: ("terminationGracePeriodSeconds", "int")},
    "ProbeHandler": {1: ("exec", "ExecAction"), 2: ("httpGet", "HTTPGetAction"), 3: ("tcpSocket", "TCPSocketAction"),
                     4: ("grpc", "GRPCAction")},
    "ExecAction": {1: ("command", "[]string")},
    "HTTPGetAction": {1: ("path", "string"), 2: ("port", "IntOrString"), 3: ("host", "string"),
                      4: ("scheme", "string"), 5: ("httpHeaders", "[]HTTPHeader")},
    "HTTPHeader": {1: ("name", "string"), 2: ("value", "string")},
    "TCPSocketAction": {1: ("port", "IntOrString"), 2: ("host", "string")},
    "GRPCAction": {1: ("port", "int"), 2: ("service", "string")},
    "Lifecycle": {1: ("postStart", "LifecycleHandler"), 2: ("preStop", "LifecycleHandler"),
                  3: ("stopSignal", "string")},
    "LifecycleHandler": {1: ("exec", "ExecAction"), 2: ("httpGet", "HTTPGetAction"),
                         3: ("tcpSocket", "TCPSocketAction"), 4: ("sleep", "SleepAction")},
    "SleepAction": {1: ("seconds", "int")},
    "PodSecurityContext": {
        1: ("seLinuxOptions", "SELinuxOptions"), 8: ("windowsOptions", "WindowsSecurityContextOptions"),
        2: ("runAsUser", "int"), 6: ("runAsGroup", "int"), 3: ("runAsNonRoot", "bool"),
        4: ("supplementalGroups", "[]int"), 12: ("supplementalGroupsPolicy", "string"), 5: ("fsGroup", "int"),
        7: ("sysctls", "[]Sysctl"), 9: ("fsGroupChangePolicy", "string"), 10: ("seccompProfile", "SeccompProfile"),
        11: ("appArmorProfile", "AppArmorProfile"), 13: ("seLinuxChangePolicy", "string"),
    },
    "SecurityContext": {
        1: ("capabilities", "Capabilities"), 2: ("privileged", "bool"), 3: ("seLinuxOptions", "SELinuxOptions"),
        10: ("windowsOptions", "WindowsSecurityContextOptions"), 4: ("runAsUser", "int"), 8: ("runAsGroup", "int"),
        5: ("runAsNonRoot", "bool"), 6: ("readOnlyRootFilesystem", "bool"), 7: ("allowPrivilegeEscalation", "bool"),
        9: ("procMount", "string"), 11: ("seccompProfile", "SeccompProfile"),
        12: ("appArmorProfile", "AppArmorProfile"),
    },
    "Capabilities": {1: ("add", "[]string"), 2: ("drop", "[]string")},
    "SELinuxOptions": {1: ("user", "string"), 2: ("role", "string"), 3: ("type", "string"), 4: ("level", "string")},
    "SeccompProfile": {1: ("type", "string"), 2: ("localhostProfile", "string")},
    "AppArmorProfile": {1: ("type", "string"), 2: ("localhostProfile", "string")},
    "WindowsSecurityContextOptions": {1: ("gmsaCredentialSpecName", "string"), 2: ("gmsaCredentialSpec", "string"),
                                      3: ("runAsUserName", "string"), 4: ("hostProcess", "bool")},
    "Sysctl": {1: ("name", "string"), 2: ("value", "string")},
    "Toleration": {1: ("key", "string"), 2: ("operator", "string"), 3: ("value", "string"), 4: ("effect", "string"),
                   5: ("tolerationSeconds", "int")},
    "HostAlias": {1: ("ip", "string"), 2: ("hostnames", "[]string")},
    "PodDNSConfig": {1: ("nameservers", "[]string"), 2: ("searches", "[]string"),
                     3: ("options", "[]PodDNSConfigOption")},
    "PodDNSConfigOption": {1: ("name", "string"), 2: ("value", "string")},
    "PodReadinessGate": {1: ("conditionType", "string")},
    "PodOS": {1: ("name", "string")},
    "PodSchedulingGate": {1: ("name", "string")},
    "PodResourceClaim": {1: ("name", "string"), 3: ("resourceClaimName", "string"),
                         4: ("resourceClaimTemplateName", "string")},
    "TopologySpreadConstraint": {1: ("maxSkew", "int"), 2: ("topologyKey", "string"),
                                 3: ("whenUnsatisfiable", "string"), 4: ("labelSelector", "LabelSelector"),
                                 5: ("minDomains", "int"), 6: ("nodeAffinityPolicy", "string"),
                                 7: ("nodeTaintsPolicy", "string"), 8: ("matchLabelKeys", "[]string")},
    "Affinity": {1: ("nodeAffinity", "NodeAffinity"), 2: ("podAffinity", "PodAffinity"),
                 3: ("podAntiAffinity", "PodAffinity")},  # PodAntiAffinity has PodAffinity's fields exactly
    "NodeAffinity": {1: ("requiredDuringSchedulingIgnoredDuringExecution", "NodeSelector"),
                     2: ("preferredDuringSchedulingIgnoredDuringExecution", "[]PreferredSchedulingTerm")},
    "NodeSelector": {1: ("nodeSelectorTerms", "[]NodeSelectorTerm")},
    "NodeSelectorTerm": {1: ("matchExpressions", "[]NodeSelectorRequirement"),
                         2: ("matchFields", "[]NodeSelectorRequirement")},
    "NodeSelectorRequirement": {1: ("key", "string"), 2: ("operator", "string"), 3: ("values", "[]string")},
    "PreferredSchedulingTerm": {1: ("weight", "int"), 2: ("preference", "NodeSelectorTerm")},
    "PodAffinity": {1: ("requiredDuringSchedulingIgnoredDuringExecution", "[]PodAffinityTerm"),
                    2: ("preferredDuringSchedulingIgnoredDuringExecution", "[]WeightedPodAffinityTerm")},
    "PodAffinityTerm": {1: ("labelSelector", "LabelSelector"), 2: ("namespaces", "[]string"),
                        3: ("topologyKey", "string"), 4: ("namespaceSelector", "LabelSelector"),
                        5: ("matchLabelKeys", "[]string"), 6: ("mismatchLabelKeys", "[]string")},
    "WeightedPodAffinityTerm": {1: ("weight", "int"), 2: ("podAffinityTerm", "PodAffinityTerm")},
    # Volumes: the in-tree cloud and legacy network sources are listed so that using one is a clear error.
    "Volume": {1: ("name", "string"), 2: ("", "VolumeSource")},
    "VolumeSource": {
        1: ("hostPath", "HostPathVolumeSource"), 2: ("emptyDir", "EmptyDirVolumeSource"),
        3: ("gcePersistentDisk", None), 4: ("awsElasticBlockStore", None), 5: ("gitRepo", "GitRepoVolumeSource"),
        6: ("secret", "SecretVolumeSource"), 7: ("nfs", "NFSVolumeSource"), 8: ("iscsi", None),
        9: ("glusterfs", None), 10: ("persistentVolumeClaim", "PersistentVolumeClaimVolumeSource"), 11: ("rbd", None),
        12: ("flexVolume", None), 13: ("cinder", None), 14: ("cephfs", None), 15: ("flocker", None),
        16: ("downwardAPI", "DownwardAPIVolumeSource"), 17: ("fc", None), 18: ("azureFile", None),
        19: ("configMap", "ConfigMapVolumeSource"), 20: ("vsphereVolume", None), 21: ("quobyte", None),
        22: ("azureDisk", None), 23: ("photonPersistentDisk", None), 26: ("projected", "ProjectedVolumeSource"),
        24: ("portworxVolume", None), 25: ("scaleIO", None), 27: ("storageos", None), 28: ("csi", "CSIVolumeSource"),
        29: ("ephemeral", None), 30: ("image", "ImageVolumeSource"),
    },
    "HostPathVolumeSource": {1: ("path", "string"), 2: ("type", "string")},
    "EmptyDirVolumeSource": {1: ("medium", "string"), 2: ("sizeLimit", "Quantity")},
    "GitRepoVolumeSource": {1: ("repository", "string"), 2: ("revision", "string"), 3: ("directory", "string")},
    "SecretVolumeSource": {1: ("secretName", "string"), 2: ("items", "[]KeyToPath"), 3: ("defaultMode", "int"),
                           4: ("optional", "bool")},
    "ConfigMapVolumeSource": {1: ("", "LocalObjectReference"), 2: ("items", "[]KeyToPath"), 3: ("defaultMode", "int"),
                              4: ("optional", "bool")},
    "KeyToPath": {1: ("key", "string"), 2: ("path", "string"), 3: ("mode", "int")},
    "NFSVolumeSource": {1: ("server", "string"), 2: ("path", "string"), 3: ("readOnly", "bool?")},
    "PersistentVolumeClaimVolumeSource": {1: ("claimName", "string"), 2: ("readOnly", "bool?")},
    "DownwardAPIVolumeSource": {1: ("items", "[]DownwardAPIVolumeFile"), 2: ("defaultMode", "int")},
    "DownwardAPIVolumeFile": {1: ("path", "string"), 2: ("fieldRef", "ObjectFieldSelector"),
                              3: ("resourceFieldRef", "ResourceFieldSelector"), 4: ("mode", "int")},
    "ProjectedVolumeSource": {1: ("sources", "[]VolumeProjection"), 2: ("defaultMode", "int")},
    "VolumeProjection": {1: ("secret", "SecretProjection"), 2: ("downwardAPI", "DownwardAPIProjection"),
                         3: ("configMap", "ConfigMapProjection"),
                         4: ("serviceAccountToken", "ServiceAccountTokenProjection"),
                         5: ("clusterTrustBundle", "ClusterTrustBundleProjection")},
    "SecretProjection": {1: ("", "LocalObjectReference"), 2: ("items", "[]KeyToPath"), 4: ("optional", "bool")},
    "ConfigMapProjection": {1: ("", "LocalObjectReference"), 2: ("items", "[]KeyToPath"), 4: ("optional", "bool")},
    "DownwardAPIProjection": {1: ("items", "[]DownwardAPIVolumeFile")},
    "ServiceAccountTokenProjection": {1: ("audience", "string"), 2: ("expirationSeconds", "int"),
                                      3: ("path", "string")},
    "ClusterTrustBundleProjection": {1: ("name", "string"), 2: ("signerName", "string"),
                                     3: ("labelSelector", "LabelSelector"), 5: ("optional", "bool"),
                                     4: ("path", "string")},
    "CSIVolumeSource": {1: ("driver", "string"), 2: ("readOnly", "bool"), 3: ("fsType", "string"),
                        4: ("volumeAttributes", "{}string"), 5: ("nodePublishSecretRef", "LocalObjectReference")},
    "ImageVolumeSource": {1: ("reference", "string"), 2: ("pullPolicy", "string")},
    # Clients creating a Pod send an empty status; the per-container statuses only come from a kubelet.
    "PodStatus": {
        1: ("phase", "string"), 2: ("conditions", "[]PodCondition"), 3: ("message", "string"), 4: ("reason", "string"),
        11: ("nominatedNodeName", "string"), 5: ("hostIP", "string"), 16: ("hostIPs", "[]HostIP"),
        6: ("podIP", "string"), 12: ("podIPs", "[]PodIP"), 7: ("startTime", "Time"),
        10: ("initContainerStatuses", None), 8: ("containerStatuses", None), 9: ("qosClass", "string"),
        13: ("ephemeralContainerStatuses", None), 14: ("resize", "string"), 15: ("resourceClaimStatuses", None),
        17: ("observedGeneration", "int?"),
    },
    "PodCondition": {1: ("type", "string"), 2: ("status", "string"), 3: ("lastProbeTime", "Time"),
                     4: ("lastTransitionTime", "Time"), 5: ("reason", "string"), 6: ("message", "string"),
                     7: ("observedGeneration", "int?")},
    "HostIP": {1: ("ip", "string")},
    "PodIP": {1: ("ip", "string")},
}

_APPS_BATCH: dict[str, dict[int, Field]] = {
    "Deployment": {1: ("metadata", "ObjectMeta"), 2: ("spec", "DeploymentSpec"), 3: ("status", "DeploymentStatus")},
    "DeploymentSpec": {1: ("replicas", "int"), 2: ("selector", "LabelSelector"), 3: ("template", "PodTemplateSpec"),
                       4: ("strategy", "DeploymentStrategy"), 5: ("minReadySeconds", "int?"),
                       6: ("revisionHistoryLimit", "int"), 7: ("paused", "bool?"),
                       9: ("progressDeadlineSeconds", "int")},
    "DeploymentStrategy": {1: ("type", "string"), 2: ("rollingUpdate", "RollingUpdateDeployment")},
    "RollingUpdateDeployment": {1: ("maxUnavailable", "IntOrString"), 2: ("maxSurge", "IntOrString")},
    "DeploymentStatus": {1: ("observedGeneration", "int?"), 2: ("replicas", "int?"), 3: ("updatedReplicas", "int?"),
                         7: ("readyReplicas", "int?"), 4: ("availableReplicas", "int?"),
                         5: ("unavailableReplicas", "int?"), 6: ("conditions", "[]DeploymentCondition"),
                         8: ("collisionCount", "int"), 9: ("terminatingReplicas", "int")},
    "DeploymentCondition": {1: ("type", "string"), 2: ("status", "string"), 6: ("lastUpdateTime", "Time"),
                            7: ("lastTransitionTime", "Time"), 4: ("reason", "string"), 5: ("message", "string")},
    "Job": {1: ("metadata", "ObjectMeta"), 2: ("spec", "JobSpec"), 3: ("status", "JobStatus")},
    "JobSpec": {
        1: ("parallelism", "int"), 2: ("completions", "int"), 3: ("activeDeadlineSeconds", "int"),
        11: ("podFailurePolicy", None), 16: ("successPolicy", None), 7: ("backoffLimit", "int"),
        12: ("backoffLimitPerIndex", "int"), 13: ("maxFailedIndexes", "int"), 4: ("selector", "LabelSelector"),
        5: ("manualSelector", "bool"), 6: ("template", "PodTemplateSpec"), 8: ("ttlSecondsAfterFinished", "int"),
        9: ("completionMode", "string"), 10: ("suspend", "bool"), 14: ("podReplacementPolicy", "string"),
        15: ("managedBy", "string"),
    },
    "JobStatus": {1: ("conditions", "[]JobCondition"), 2: ("startTime", "Time"), 3: ("completionTime", "Time"),
                  4: ("active", "int?"), 5: ("succeeded", "int?"), 6: ("failed", "int?"), 11: ("terminating", "int"),
                  7: ("completedIndexes", "string"), 10: ("failedIndexes", "string"),
                  8: ("uncountedTerminatedPods", "UncountedTerminatedPods"), 9: ("ready", "int")},
    "JobCondition": {1: ("type", "string"), 2: ("status", "string"), 3: ("lastProbeTime", "Time"),
                     4: ("lastTransitionTime", "Time"), 5: ("reason", "string"), 6: ("message", "string")},
    "UncountedTerminatedPods": {1: ("succeeded", "[]string"), 2: ("failed", "[]string")},
    "JobTemplateSpec": {1: ("metadata", "ObjectMeta"), 2: ("spec", "JobSpec")},
    "CronJob": {1: ("metadata", "ObjectMeta"), 2: ("spec", "CronJobSpec"), 3: ("status", "CronJobStatus")},
    "CronJobSpec": {1: ("schedule", "string"), 8: ("timeZone", "string"), 2: ("startingDeadlineSeconds", "int"),
                    3: ("concurrencyPolicy", "string"), 4: ("suspend", "bool"), 5: ("jobTemplate", "JobTemplateSpec"),
                    6: ("successfulJobsHistoryLimit", "int"), 7: ("failedJobsHistoryLimit", "int")},
    "CronJobStatus": {1: ("active", "[]ObjectReference"), 4: ("lastScheduleTime", "Time"),
                      5: ("lastSuccessfulTime", "Time")},
}

_CLUSTER: dict[str, dict[int, Field]] = {
    # rbac.authorization.k8s.io/v1
    "Role": {1: ("metadata", "ObjectMeta"), 2: ("rules", "[]PolicyRule")},
    "ClusterRole": {1: ("metadata", "ObjectMeta"), 2: ("rules", "[]PolicyRule"),
                    3: ("aggregationRule", "AggregationRule")},
    "AggregationRule": {1: ("clusterRoleSelectors", "[]LabelSelector")},
    "PolicyRule": {1: ("verbs", "[]string"), 2: ("apiGroups", "[]string"), 3: ("resources", "[]string"),
                   4: ("resourceNames", "[]string"), 5: ("nonResourceURLs", "[]string")},
    "RoleBinding": {1: ("metadata", "ObjectMeta"), 2: ("subjects", "[]Subject"), 3: ("roleRef", "RoleRef")},
    "ClusterRoleBinding": {1: ("metadata", "ObjectMeta"), 2: ("subjects", "[]Subject"), 3: ("roleRef", "RoleRef")},
    "Subject": {1: ("kind", "string"), 2: ("apiGroup", "string"), 3: ("name", "string"), 4: ("namespace", "string")},
    "RoleRef": {1: ("apiGroup", "string"), 2: ("kind", "string"), 3: ("name", "string")},
    # scheduling.k8s.io/v1
    "PriorityClass": {1: ("metadata", "ObjectMeta"), 2: ("value", "int"), 3: ("globalDefault", "bool?"),
                      4: ("description", "string"), 5: ("preemptionPolicy", "string")},
    # policy/v1
    "PodDisruptionBudget": {1: ("metadata", "ObjectMeta"), 2: ("spec", "PodDisruptionBudgetSpec"),
                            3: ("status", "PodDisruptionBudgetStatus")},
    "PodDisruptionBudgetSpec": {1: ("minAvailable", "IntOrString"), 2: ("selector", "LabelSelector"),
                                3: ("maxUnavailable", "IntOrString"), 4: ("unhealthyPodEvictionPolicy", "string")},
    "PodDisruptionBudgetStatus": {1: ("observedGeneration", "int?"), 2: ("disruptedPods", "{}Time"),
                                  3: ("disruptionsAllowed", "int"), 4: ("currentHealthy", "int"),
                                  5: ("desiredHealthy", "int"), 6: ("expectedPods", "int"),
                                  7: ("conditions", "[]Condition")},
    "Eviction": {1: ("metadata", "ObjectMeta"), 2: ("deleteOptions", "DeleteOptions")},
    # networking.k8s.io/v1
    "Ingress": {1: ("metadata", "ObjectMeta"), 2: ("spec", "IngressSpec"), 3: ("status", "IngressStatus")},
    "IngressSpec": {4: ("ingressClassName", "string"), 1: ("defaultBackend", "IngressBackend"),
                    2: ("tls", "[]IngressTLS"), 3: ("rules", "[]IngressRule")},
    "IngressBackend": {4: ("service", "IngressServiceBackend"), 3: ("resource", "TypedLocalObjectReference")},
    "IngressServiceBackend": {1: ("name", "string"), 2: ("port", "ServiceBackendPort")},
    "ServiceBackendPort": {1: ("name", "string"), 2: ("number", "int?")},
    "IngressTLS": {1: ("hosts", "[]string"), 2: ("secretName", "string")},
    "IngressRule": {1: ("host", "string"), 2: ("", "IngressRuleValue")},
    "IngressRuleValue": {1: ("http", "HTTPIngressRuleValue")},
    "HTTPIngressRuleValue": {1: ("paths", "[]HTTPIngressPath")},
    "HTTPIngressPath": {1: ("path", "string"), 3: ("pathType", "string"), 2: ("backend", "IngressBackend")},
    "IngressStatus": {1: ("loadBalancer", "IngressLoadBalancerStatus")},
    "IngressLoadBalancerStatus": {1: ("ingress", "[]IngressLoadBalancerIngress")},
    # IngressPortStatus has core PortStatus's fields exactly.
    "IngressLoadBalancerIngress": {1: ("ip", "string"), 2: ("hostname", "string"), 4: ("ports", "[]PortStatus")},
    # authentication.k8s.io/v1 and authorization.k8s.io/v1: kubectl create token, auth whoami, auth can-i
    "TokenRequest": {1: ("metadata", "ObjectMeta"), 2: ("spec", "TokenRequestSpec"),
                     3: ("status", "TokenRequestStatus")},
    "TokenRequestSpec": {1: ("audiences", "[]string"), 4: ("expirationSeconds", "int"),
                         3: ("boundObjectRef", "BoundObjectReference")},
    "BoundObjectReference": {1: ("kind", "string"), 2: ("apiVersion", "string"), 3: ("name", "string"),
                             4: ("uid", "string")},
    "TokenRequestStatus": {1: ("token", "string"), 2: ("expirationTimestamp", "Time")},
    "SelfSubjectReview": {1: ("metadata", "ObjectMeta"), 2: ("status", "SelfSubjectReviewStatus")},
    "SelfSubjectReviewStatus": {1: ("userInfo", "UserInfo")},
    "UserInfo": {1: ("username", "string"), 2: ("uid", "string"), 3: ("groups", "[]string"),
                 4: ("extra", "{}ExtraValue")},
    "SelfSubjectAccessReview": {1: ("metadata", "ObjectMeta"), 2: ("spec", "SelfSubjectAccessReviewSpec"),
                                3: ("status", "SubjectAccessReviewStatus")},
    "SelfSubjectAccessReviewSpec": {1: ("resourceAttributes", "ResourceAttributes"),
                                    2: ("nonResourceAttributes", "NonResourceAttributes")},
    "ResourceAttributes": {1: ("namespace", "string"), 2: ("verb", "string"), 3: ("group", "string"),
                           4: ("version", "string"), 5: ("resource", "string"), 6: ("subresource", "string"),
                           7: ("name", "string"), 8: ("fieldSelector", "FieldSelectorAttributes"),
                           9: ("labelSelector", "LabelSelectorAttributes")},
    "FieldSelectorAttributes": {1: ("rawSelector", "string"), 2: ("requirements", "[]FieldSelectorRequirement")},
    "LabelSelectorAttributes": {1: ("rawSelector", "string"), 2: ("requirements", "[]LabelSelectorRequirement")},
    "NonResourceAttributes": {1: ("path", "string"), 2: ("verb", "string")},
    "SubjectAccessReviewStatus": {1: ("allowed", "bool"), 4: ("denied", "bool?"), 2: ("reason", "string"),
                                  3: ("evaluationError", "string")},
}

_AUTOSCALING: dict[str, dict[int, Field]] = {
    # autoscaling/v1 and v2 share message names with different fields: the v1 ones carry a "v1." prefix here.
    "v1.Scale": {1: ("metadata", "ObjectMeta"), 2: ("spec", "v1.ScaleSpec"), 3: ("status", "v1.ScaleStatus")},
    # Go drops replicas=0 here (omitempty), but a Scale PUT of 0 means "scale to zero": keep it explicit.
    "v1.ScaleSpec": {1: ("replicas", "int")},
    "v1.ScaleStatus": {1: ("replicas", "int"), 2: ("selector", "string")},
    "v1.HorizontalPodAutoscaler": {1: ("metadata", "ObjectMeta"), 2: ("spec", "v1.HorizontalPodAutoscalerSpec"),
                                   3: ("status", "v1.HorizontalPodAutoscalerStatus")},
    "v1.HorizontalPodAutoscalerSpec": {1: ("scaleTargetRef", "CrossVersionObjectReference"),
                                       2: ("minReplicas", "int"), 3: ("maxReplicas", "int"),
                                       4: ("targetCPUUtilizationPercentage", "int")},
    "v1.HorizontalPodAutoscalerStatus": {1: ("observedGeneration", "int"), 2: ("lastScaleTime", "Time"),
                                         3: ("currentReplicas", "int"), 4: ("desiredReplicas", "int"),
                                         5: ("currentCPUUtilizationPercentage", "int")},
    # Identical in v1 and v2.
    "CrossVersionObjectReference": {1: ("kind", "string"), 2: ("name", "string"), 3: ("apiVersion", "string")},
    "HorizontalPodAutoscaler": {1: ("metadata", "ObjectMeta"), 2: ("spec", "HorizontalPodAutoscalerSpec"),
                                3: ("status", "HorizontalPodAutoscalerStatus")},
    "HorizontalPodAutoscalerSpec": {1: ("scaleTargetRef", "CrossVersionObjectReference"), 2: ("minReplicas", "int"),
                                    3: ("maxReplicas", "int"), 4: ("metrics", "[]MetricSpec"),
                                    5: ("behavior", "HorizontalPodAutoscalerBehavior")},
    "HorizontalPodAutoscalerBehavior": {1: ("scaleUp", "HPAScalingRules"), 2: ("scaleDown", "HPAScalingRules")},
    "HPAScalingRules": {3: ("stabilizationWindowSeconds", "int"), 1: ("selectPolicy", "string"),
                        2: ("policies", "[]HPAScalingPolicy"), 4: ("tolerance", "Quantity")},
    "HPAScalingPolicy": {1: ("type", "string"), 2: ("value", "int"), 3: ("periodSeconds", "int")},
    "MetricSpec": {1: ("type", "string"), 2: ("object", "ObjectMetricSource"), 3: ("pods", "PodsMetricSource"),
                   4: ("resource", "ResourceMetricSource"), 7: ("containerResource", "ContainerResourceMetricSource"),
                   5: ("external", "ExternalMetricSource")},
    "ObjectMetricSource": {1: ("describedObject", "CrossVersionObjectReference"), 2: ("target", "MetricTarget"),
                           3: ("metric", "MetricIdentifier")},
    "PodsMetricSource": {1: ("metric", "MetricIdentifier"), 2: ("target", "MetricTarget")},
    "ResourceMetricSource": {1: ("name", "string"), 2: ("target", "MetricTarget")},
    "ContainerResourceMetricSource": {1: ("name", "string"), 2: ("target", "MetricTarget"),
                                      3: ("container", "string")},
    "ExternalMetricSource": {1: ("metric", "MetricIdentifier"), 2: ("target", "MetricTarget")},
    "MetricIdentifier": {1: ("name", "string"), 2: ("selector", "LabelSelector")},
    "MetricTarget": {1: ("type", "string"), 2: ("value", "Quantity"), 3: ("averageValue", "Quantity"),
                     4: ("averageUtilization", "int")},
    "HorizontalPodAutoscalerStatus": {1: ("observedGeneration", "int"), 2: ("lastScaleTime", "Time"),
                                      3: ("currentReplicas", "int?"), 4: ("desiredReplicas", "int"),
                                      5: ("currentMetrics", "[]MetricStatus"),
                                      6: ("conditions", "[]HorizontalPodAutoscalerCondition")},
    "MetricStatus": {1: ("type", "string"), 2: ("object", "ObjectMetricStatus"), 3: ("pods", "PodsMetricStatus"),
                     4: ("resource", "ResourceMetricStatus"), 7: ("containerResource", "ContainerResourceMetricStatus"),
                     5: ("external", "ExternalMetricStatus")},
    "ObjectMetricStatus": {1: ("metric", "MetricIdentifier"), 2: ("current", "MetricValueStatus"),
                           3: ("describedObject", "CrossVersionObjectReference")},
    "PodsMetricStatus": {1: ("metric", "MetricIdentifier"), 2: ("current", "MetricValueStatus")},
    "ResourceMetricStatus": {1: ("name", "string"), 2: ("current", "MetricValueStatus")},
    "ContainerResourceMetricStatus": {1: ("name", "string"), 2: ("current", "MetricValueStatus"),
                                      3: ("container", "string")},
    "ExternalMetricStatus": {1: ("metric", "MetricIdentifier"), 2: ("current", "MetricValueStatus")},
    "MetricValueStatus": {1: ("value", "Quantity"), 2: ("averageValue", "Quantity"), 3: ("averageUtilization", "int")},
    "HorizontalPodAutoscalerCondition": {1: ("type", "string"), 2: ("status", "string"),
                                         3: ("lastTransitionTime", "Time"), 4: ("reason", "string"),
                                         5: ("message", "string")},
}

_MESSAGES: dict[str, dict[int, Field]] = {**_META, **_CORE, **_APPS_BATCH, **_CLUSTER, **_AUTOSCALING}

# (apiVersion, kind) of the envelope -> root message. DeleteOptions is registered in every group version.
_KINDS: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "ConfigMap", ("v1", "Secret"): "Secret", ("v1", "Namespace"): "Namespace",
    ("v1", "Service"): "Service", ("v1", "ServiceAccount"): "ServiceAccount",
    ("v1", "ResourceQuota"): "ResourceQuota", ("v1", "Pod"): "Pod", ("v1", "Binding"): "Binding",
    ("apps/v1", "Deployment"): "Deployment",
    ("batch/v1", "Job"): "Job", ("batch/v1", "CronJob"): "CronJob",
    ("rbac.authorization.k8s.io/v1", "Role"): "Role",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "ClusterRole",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "RoleBinding",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "ClusterRoleBinding",
    ("scheduling.k8s.io/v1", "PriorityClass"): "PriorityClass",
    ("policy/v1", "PodDisruptionBudget"): "PodDisruptionBudget", ("policy/v1", "Eviction"): "Eviction",
    ("networking.k8s.io/v1", "Ingress"): "Ingress",
    ("autoscaling/v1", "HorizontalPodAutoscaler"): "v1.HorizontalPodAutoscaler",
    ("autoscaling/v1", "Scale"): "v1.Scale",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "HorizontalPodAutoscaler",
    ("authentication.k8s.io/v1", "TokenRequest"): "TokenRequest",
    ("authentication.k8s.io/v1", "SelfSubjectReview"): "SelfSubjectReview",
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"): "SelfSubjectAccessReview",
}
_ANY_VERSION_KINDS: dict[str, str] = {"DeleteOptions": "DeleteOptions"}


# ------------------------------------------------------------------------------------------------ wire format

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """An unsigned varint at pos: (value, position after it)."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise MalformedProtobuf("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise MalformedProtobuf("varint longer than 10 bytes")


def signed64(value: int) -> int:
    """int32 and int64 travel as the 64-bit two's complement (negatives take ten bytes), not zigzag."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def iter_fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) for each field: ints for varints and fixed widths, bytes otherwise."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise MalformedProtobuf("field number 0")
        value: int | bytes
        if wire == _VARINT:
            value, pos = read_varint(buf, pos)
        elif wire == _BYTES:
            size, pos = read_varint(buf, pos)
            if pos + size > end:
                raise MalformedProtobuf(f"field {number}: length {size} runs past the end of the message")
            value, pos = buf[pos:pos + size], pos + size
        elif wire in (_FIXED64, _FIXED32):
            width = 8 if wire == _FIXED64 else 4
            if pos + width > end:
                raise MalformedProtobuf(f"field {number}: truncated fixed-width value")
            value, pos = int.from_bytes(buf[pos:pos + width], "little"), pos + width
        else:
            # Groups (3, 4) are proto1 leftovers no Kubernetes message uses.
            raise MalformedProtobuf(f"field {number}: unsupported wire type {wire}")
        yield number, wire, value


# ---------------------------------------------------------------------------------------------- special types

def _time(buf: bytes, micro: bool = False) -> str | None:
    seconds = nanos = 0
    for number, _, value in iter_fields(buf):
        if number == 1 and isinstance(value, int):
            seconds = signed64(value)
        elif number == 2 and isinstance(value, int):
            nanos = signed64(value)
    if seconds == 0 and nanos == 0:
        return None  # Go's zero time: encoding/json writes null, which the JSON path stores as absent
    when = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC) + _dt.timedelta(seconds=seconds)
    if micro:
        return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{nanos // 1000:06d}Z"
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _int_or_string(buf: bytes) -> int | str:
    kind, int_val, str_val = 0, 0, ""
    for number, _, value in iter_fields(buf):
        if number == 1 and isinstance(value, int):
            kind = value
        elif number == 2 and isinstance(value, int):
            int_val = signed64(value)
        elif number == 3 and isinstance(value, bytes):
            str_val = _utf8(value, "IntOrString.strVal")
    return str_val if kind == 1 else int_val


def _quantity(buf: bytes) -> str | None:
    text = ""
    for number, _, value in iter_fields(buf):
        if number == 1 and isinstance(value, bytes):
            text = _utf8(value, "Quantity")
    return text or None


def _raw_json(buf: bytes) -> Any:
    """RawExtension and FieldsV1 carry their content as JSON bytes in field 1."""
    raw = b""
    for number, _, value in iter_fields(buf):
        if number == 1 and isinstance(value, bytes):
            raw = value
    if not raw:
        return None
    if raw.startswith(MAGIC):
        raise UnsupportedProtobuf("an embedded object (RawExtension) is itself protobuf-encoded; send it as JSON")
    try:
        return jsonutil.loads(raw)
    except ValueError as exc:
        raise MalformedProtobuf(f"embedded raw object is not JSON: {exc}") from None


def _extra_value(buf: bytes) -> list[str]:
    # authentication/v1 ExtraValue is a []string wrapped in a message (field 1, repeated).
    return [_utf8(v, "ExtraValue") for n, _, v in iter_fields(buf) if n == 1 and isinstance(v, bytes)]


_SPECIAL: dict[str, Callable[[bytes], Any]] = {
    "Time": _time,
    "MicroTime": lambda buf: _time(buf, micro=True),
    "IntOrString": _int_or_string,
    "Quantity": _quantity,
    "RawExtension": _raw_json,
    "FieldsV1": _raw_json,
    "ExtraValue": _extra_value,
}


def _utf8(value: bytes, where: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedProtobuf(f"{where}: string is not valid UTF-8") from None


# ------------------------------------------------------------------------------------------------- decoding

_SCALARS = {"string", "bytes", "double", "int", "int?", "bool", "bool?"}
_ZERO_DROPPED = {"int?", "bool?"}


def _scalar(spec: str, wire: int, value: int | bytes, where: str) -> Any:
    if spec in ("string", "bytes"):
        if not isinstance(value, bytes):
            raise MalformedProtobuf(f"{where}: expected a length-delimited value, got wire type {wire}")
        return _utf8(value, where) if spec == "string" else base64.b64encode(value).decode("ascii")
    if spec == "double":
        if wire != _FIXED64 or not isinstance(value, int):
            raise MalformedProtobuf(f"{where}: expected a 64-bit value, got wire type {wire}")
        return struct.unpack("<d", value.to_bytes(8, "little"))[0]
    if wire != _VARINT or not isinstance(value, int):
        raise MalformedProtobuf(f"{where}: expected a varint, got wire type {wire}")
    if spec in ("bool", "bool?"):
        return value != 0
    return signed64(value)


def _decode_value(spec: str, wire: int, value: int | bytes, where: str) -> Any:
    if spec in _SCALARS:
        return _scalar(spec, wire, value, where)
    if not isinstance(value, bytes):
        raise MalformedProtobuf(f"{where}: expected an embedded message, got wire type {wire}")
    return decode_message(spec, value, where)


def _repeated_scalars(spec: str, wire: int, value: int | bytes, where: str) -> list[Any]:
    # proto2 writes repeated numbers one field each, but a packed run (one length-delimited field) is legal too.
    if spec in ("int", "int?", "bool", "bool?") and wire == _BYTES and isinstance(value, bytes):
        out, pos = [], 0
        while pos < len(value):
            item, pos = read_varint(value, pos)
            out.append(_scalar(spec, _VARINT, item, where))
        return out
    return [_scalar(spec, wire, value, where)]


def _map_entry(spec: str, value: int | bytes, where: str) -> tuple[str, Any]:
    if not isinstance(value, bytes):
        raise MalformedProtobuf(f"{where}: map entry is not a message")
    key, item = "", None
    item_present = False
    for number, wire, field_value in iter_fields(value):
        if number == 1:
            key = _scalar("string", wire, field_value, where)
        elif number == 2:
            item = _decode_value(spec, wire, field_value, f"{where}[{key}]")
            item_present = True
    if not item_present:
        # An absent value is the value type's zero: "" for strings and bytes.
        item = "" if spec in ("string", "bytes") else None
    return key, item


def decode_message(name: str, buf: bytes, where: str = "") -> Any:
    """Decode one message of the named table (or special type) into its JSON form."""
    special = _SPECIAL.get(name)
    if special is not None:
        return special(buf)
    table = _MESSAGES.get(name)
    if table is None:
        raise UnsupportedProtobuf(f"no protobuf table for message {name}")
    where = where or name
    # Gather first: a singular field seen twice keeps the last scalar, and for a message the concatenation of its
    # occurrences (proto's merge rule); keys then come out in Go struct order, as encoding/json writes them.
    seen: dict[int, list[tuple[int, int | bytes]]] = {}
    for number, wire, value in iter_fields(buf):
        if number not in table:
            log.debug("protobuf: skipping unknown field %d of %s", number, where)
            continue
        seen.setdefault(number, []).append((wire, value))
    out: dict[str, Any] = {}
    for number, (json_name, spec) in table.items():
        occurrences = seen.get(number)
        if not occurrences:
            continue
        path = f"{where}.{json_name}" if json_name else where
        if spec is None:
            raise UnsupportedProtobuf(
                f"field {json_name} (number {number}) of {name} is not supported in protobuf bodies by this "
                "server; send the object as application/json")
        if spec.startswith("[]"):
            item_spec = spec[2:]
            items: list[Any] = []
            for wire, value in occurrences:
                if item_spec in _SCALARS:
                    items.extend(_repeated_scalars(item_spec, wire, value, path))
                else:
                    items.append(_decode_value(item_spec, wire, value, f"{path}[{len(items)}]"))
            out[json_name] = items
        elif spec.startswith("{}"):
            entries: dict[str, Any] = {}
            for _, value in occurrences:
                key, item = _map_entry(spec[2:], value, path)
                entries[key] = item
            out[json_name] = entries
        elif spec in _SCALARS:
            wire, value = occurrences[-1]
            decoded = _scalar(spec, wire, value, path)
            if decoded == "" or (spec in _ZERO_DROPPED and not decoded):
                continue
            out[json_name] = decoded
        else:
            if any(wire != _BYTES for wire, _ in occurrences):
                raise MalformedProtobuf(f"{path}: expected an embedded message")
            joined = b"".join(v for _, v in occurrences if isinstance(v, bytes))
            decoded = decode_message(spec, joined, path)
            if decoded is None:
                continue
            if json_name:
                out[json_name] = decoded
            else:
                out.update(decoded)  # an inline-embedded struct
    return out


def decode_unknown(body: bytes) -> tuple[str, str, bytes]:
    """Split the envelope: (apiVersion, kind, raw object bytes). It is a runtime.Unknown after 4 magic bytes."""
    if not body.startswith(MAGIC):
        raise MalformedProtobuf(
            "provided data does not appear to be a protobuf message, expected prefix [107 56 115 0]")
    api_version = kind = encoding = ""
    raw = b""
    for number, wire, value in iter_fields(body[len(MAGIC):]):
        if number == 1:
            if not isinstance(value, bytes):
                raise MalformedProtobuf("envelope typeMeta is not a message")
            for sub, sub_wire, sub_value in iter_fields(value):
                if sub == 1:
                    api_version = _scalar("string", sub_wire, sub_value, "typeMeta.apiVersion")
                elif sub == 2:
                    kind = _scalar("string", sub_wire, sub_value, "typeMeta.kind")
        elif number == 2:
            if not isinstance(value, bytes):
                raise MalformedProtobuf("envelope raw is not bytes")
            raw = value
        elif number == 3:
            encoding = _scalar("string", wire, value, "contentEncoding")
    if encoding:
        raise UnsupportedProtobuf(f"protobuf content encoding {encoding!r} is not supported")
    if not kind:
        raise MalformedProtobuf("Object 'Kind' is missing in the protobuf envelope")
    return api_version, kind, raw


def decode_object(body: bytes) -> dict[str, Any]:
    """A whole request body in `application/vnd.kubernetes.protobuf` -> the object as JSON-shaped dicts."""
    api_version, kind, raw = decode_unknown(body)
    root = _KINDS.get((api_version, kind)) or _ANY_VERSION_KINDS.get(kind)
    if root is None:
        raise UnsupportedProtobuf(
            f"this server cannot decode {kind} ({api_version or 'no apiVersion'}) from protobuf; "
            "send it as application/json")
    decoded = decode_message(root, raw, kind)
    return {"kind": kind, "apiVersion": api_version, **decoded}
