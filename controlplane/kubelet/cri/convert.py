"""Converters between this package's CRI dataclasses and the compiled CRI v1 protobuf messages.

Both gRPC ends need them, the client for a real containerd (remote.py) and our own server (server.py), and keeping
the two directions side by side is what makes a round trip lossless for the fields we keep. One small ``*_to_pb``
/ ``*_from_pb`` pair per message, in the style of libcloud's ``_to_*`` converters.
"""

from __future__ import annotations

from collections.abc import Mapping

from cri_api.v1 import api_pb2 as pb

from .api import (
    AuthConfig,
    Container,
    ContainerAttributes,
    ContainerConfig,
    ContainerFilter,
    ContainerMetadata,
    ContainerState,
    ContainerStats,
    ContainerStatsFilter,
    ContainerStatus,
    CpuUsage,
    DNSConfig,
    ExecRequest,
    Image,
    ImageFilter,
    ImageSpec,
    KeyValue,
    LinuxContainerConfig,
    LinuxContainerResources,
    LinuxContainerSecurityContext,
    LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext,
    MemoryUsage,
    Mount,
    MountPropagation,
    NamespaceMode,
    NamespaceOption,
    PodIP,
    PodSandbox,
    PodSandboxConfig,
    PodSandboxFilter,
    PodSandboxMetadata,
    PodSandboxNetworkStatus,
    PodSandboxState,
    PodSandboxStatus,
    PortMapping,
    Protocol_,
    RuntimeCondition,
    RuntimeStatus,
    StatusResponse,
    VersionResponse,
)

# -- small values ---------------------------------------------------------------------------------------------


def _map(m: Mapping[str, str]) -> dict[str, str]:
    return dict(m)


def _opt_int(msg: object, field: str) -> int | None:
    """A wrapped scalar (Int64Value/UInt64Value) field: None when unset."""
    return getattr(msg, field).value if msg.HasField(field) else None  # type: ignore[attr-defined]


def image_spec_to_pb(s: ImageSpec) -> pb.ImageSpec:
    return pb.ImageSpec(image=s.image, annotations=s.annotations)


def image_spec_from_pb(m: pb.ImageSpec) -> ImageSpec:
    return ImageSpec(image=m.image, annotations=_map(m.annotations))


def container_metadata_to_pb(m: ContainerMetadata) -> pb.ContainerMetadata:
    return pb.ContainerMetadata(name=m.name, attempt=m.attempt)


def container_metadata_from_pb(m: pb.ContainerMetadata) -> ContainerMetadata:
    return ContainerMetadata(name=m.name, attempt=m.attempt)


def sandbox_metadata_to_pb(m: PodSandboxMetadata) -> pb.PodSandboxMetadata:
    return pb.PodSandboxMetadata(name=m.name, uid=m.uid, namespace=m.namespace, attempt=m.attempt)


def sandbox_metadata_from_pb(m: pb.PodSandboxMetadata) -> PodSandboxMetadata:
    return PodSandboxMetadata(name=m.name, uid=m.uid, namespace=m.namespace, attempt=m.attempt)


def namespace_option_to_pb(n: NamespaceOption) -> pb.NamespaceOption:
    return pb.NamespaceOption(
        network=pb.NamespaceMode.Value(n.network.name),
        pid=pb.NamespaceMode.Value(n.pid.name),
        ipc=pb.NamespaceMode.Value(n.ipc.name),
    )


def namespace_option_from_pb(m: pb.NamespaceOption) -> NamespaceOption:
    return NamespaceOption(network=NamespaceMode(m.network), pid=NamespaceMode(m.pid), ipc=NamespaceMode(m.ipc))


def mount_to_pb(m: Mount) -> pb.Mount:
    return pb.Mount(
        container_path=m.container_path,
        host_path=m.host_path,
        readonly=m.readonly,
        selinux_relabel=m.selinux_relabel,
        propagation=pb.MountPropagation.Value(m.propagation.name),
    )


def mount_from_pb(m: pb.Mount) -> Mount:
    return Mount(
        container_path=m.container_path,
        host_path=m.host_path,
        readonly=m.readonly,
        selinux_relabel=m.selinux_relabel,
        propagation=MountPropagation(m.propagation),
    )


def resources_to_pb(r: LinuxContainerResources) -> pb.LinuxContainerResources:
    return pb.LinuxContainerResources(
        cpu_period=r.cpu_period,
        cpu_quota=r.cpu_quota,
        cpu_shares=r.cpu_shares,
        memory_limit_in_bytes=r.memory_limit_in_bytes,
        oom_score_adj=r.oom_score_adj,
        cpuset_cpus=r.cpuset_cpus,
        cpuset_mems=r.cpuset_mems,
    )


def resources_from_pb(m: pb.LinuxContainerResources) -> LinuxContainerResources:
    return LinuxContainerResources(
        cpu_period=m.cpu_period,
        cpu_quota=m.cpu_quota,
        cpu_shares=m.cpu_shares,
        memory_limit_in_bytes=m.memory_limit_in_bytes,
        oom_score_adj=m.oom_score_adj,
        cpuset_cpus=m.cpuset_cpus,
        cpuset_mems=m.cpuset_mems,
    )


# -- sandboxes ------------------------------------------------------------------------------------------------


def sandbox_config_to_pb(c: PodSandboxConfig) -> pb.PodSandboxConfig:
    msg = pb.PodSandboxConfig(
        metadata=sandbox_metadata_to_pb(c.metadata),
        hostname=c.hostname,
        log_directory=c.log_directory,
        port_mappings=[
            pb.PortMapping(
                protocol=pb.Protocol.Value(p.protocol.name),
                container_port=p.container_port,
                host_port=p.host_port,
                host_ip=p.host_ip,
            )
            for p in c.port_mappings
        ],
        labels=c.labels,
        annotations=c.annotations,
    )
    if c.dns_config is not None:
        msg.dns_config.CopyFrom(
            pb.DNSConfig(servers=c.dns_config.servers, searches=c.dns_config.searches, options=c.dns_config.options)
        )
    if c.linux is not None:
        sc = c.linux.security_context
        psc = pb.LinuxSandboxSecurityContext(
            namespace_options=namespace_option_to_pb(sc.namespace_options),
            privileged=sc.privileged,
            readonly_rootfs=sc.readonly_rootfs,
        )
        if sc.run_as_user is not None:
            psc.run_as_user.value = sc.run_as_user
        if sc.run_as_group is not None:
            psc.run_as_group.value = sc.run_as_group
        msg.linux.CopyFrom(
            pb.LinuxPodSandboxConfig(cgroup_parent=c.linux.cgroup_parent, security_context=psc, sysctls=c.linux.sysctls)
        )
    return msg


def sandbox_config_from_pb(m: pb.PodSandboxConfig) -> PodSandboxConfig:
    dns = (
        DNSConfig(
            servers=list(m.dns_config.servers), searches=list(m.dns_config.searches), options=list(m.dns_config.options)
        )
        if m.HasField("dns_config")
        else None
    )
    linux = None
    if m.HasField("linux"):
        sc = m.linux.security_context
        linux = LinuxPodSandboxConfig(
            cgroup_parent=m.linux.cgroup_parent,
            security_context=LinuxSandboxSecurityContext(
                namespace_options=namespace_option_from_pb(sc.namespace_options),
                privileged=sc.privileged,
                run_as_user=_opt_int(sc, "run_as_user"),
                run_as_group=_opt_int(sc, "run_as_group"),
                readonly_rootfs=sc.readonly_rootfs,
            ),
            sysctls=_map(m.linux.sysctls),
        )
    return PodSandboxConfig(
        metadata=sandbox_metadata_from_pb(m.metadata),
        hostname=m.hostname,
        log_directory=m.log_directory,
        dns_config=dns,
        port_mappings=[
            PortMapping(
                protocol=Protocol_(p.protocol),
                container_port=p.container_port,
                host_port=p.host_port,
                host_ip=p.host_ip,
            )
            for p in m.port_mappings
        ],
        labels=_map(m.labels),
        annotations=_map(m.annotations),
        linux=linux,
    )


def sandbox_to_pb(s: PodSandbox) -> pb.PodSandbox:
    return pb.PodSandbox(
        id=s.id,
        metadata=sandbox_metadata_to_pb(s.metadata),
        state=pb.PodSandboxState.Value(s.state.name),
        created_at=s.created_at,
        labels=s.labels,
        annotations=s.annotations,
        runtime_handler=s.runtime_handler,
    )


def sandbox_from_pb(m: pb.PodSandbox) -> PodSandbox:
    return PodSandbox(
        id=m.id,
        metadata=sandbox_metadata_from_pb(m.metadata),
        state=PodSandboxState(m.state),
        created_at=m.created_at,
        labels=_map(m.labels),
        annotations=_map(m.annotations),
        runtime_handler=m.runtime_handler,
    )


def sandbox_status_to_pb(s: PodSandboxStatus) -> pb.PodSandboxStatus:
    msg = pb.PodSandboxStatus(
        id=s.id,
        metadata=sandbox_metadata_to_pb(s.metadata),
        state=pb.PodSandboxState.Value(s.state.name),
        created_at=s.created_at,
        network=pb.PodSandboxNetworkStatus(
            ip=s.network.ip, additional_ips=[pb.PodIP(ip=p.ip) for p in s.network.additional_ips]
        ),
        labels=s.labels,
        annotations=s.annotations,
        runtime_handler=s.runtime_handler,
    )
    if s.namespace_options is not None:
        msg.linux.namespaces.options.CopyFrom(namespace_option_to_pb(s.namespace_options))
    return msg


def sandbox_status_from_pb(m: pb.PodSandboxStatus) -> PodSandboxStatus:
    return PodSandboxStatus(
        id=m.id,
        metadata=sandbox_metadata_from_pb(m.metadata),
        state=PodSandboxState(m.state),
        created_at=m.created_at,
        network=PodSandboxNetworkStatus(
            ip=m.network.ip, additional_ips=[PodIP(p.ip) for p in m.network.additional_ips]
        ),
        namespace_options=namespace_option_from_pb(m.linux.namespaces.options) if m.HasField("linux") else None,
        labels=_map(m.labels),
        annotations=_map(m.annotations),
        runtime_handler=m.runtime_handler,
    )


def sandbox_filter_to_pb(f: PodSandboxFilter) -> pb.PodSandboxFilter:
    msg = pb.PodSandboxFilter(id=f.id, label_selector=f.label_selector)
    if f.state is not None:
        msg.state.state = pb.PodSandboxState.Value(f.state.name)
    return msg


def sandbox_filter_from_pb(m: pb.PodSandboxFilter) -> PodSandboxFilter:
    return PodSandboxFilter(
        id=m.id,
        state=PodSandboxState(m.state.state) if m.HasField("state") else None,
        label_selector=_map(m.label_selector),
    )


# -- containers -----------------------------------------------------------------------------------------------


def container_config_to_pb(c: ContainerConfig) -> pb.ContainerConfig:
    msg = pb.ContainerConfig(
        metadata=container_metadata_to_pb(c.metadata),
        image=image_spec_to_pb(c.image),
        command=c.command,
        args=c.args,
        working_dir=c.working_dir,
        envs=[pb.KeyValue(key=e.key, value=e.value) for e in c.envs],
        mounts=[mount_to_pb(m) for m in c.mounts],
        labels=c.labels,
        annotations=c.annotations,
        log_path=c.log_path,
        stdin=c.stdin,
        stdin_once=c.stdin_once,
        tty=c.tty,
    )
    if c.linux is not None:
        linux = pb.LinuxContainerConfig()
        if c.linux.resources is not None:
            linux.resources.CopyFrom(resources_to_pb(c.linux.resources))
        if (sc := c.linux.security_context) is not None:
            psc = pb.LinuxContainerSecurityContext(privileged=sc.privileged, readonly_rootfs=sc.readonly_rootfs)
            if sc.run_as_user is not None:
                psc.run_as_user.value = sc.run_as_user
            if sc.run_as_group is not None:
                psc.run_as_group.value = sc.run_as_group
            linux.security_context.CopyFrom(psc)
        msg.linux.CopyFrom(linux)
    return msg


def container_config_from_pb(m: pb.ContainerConfig) -> ContainerConfig:
    linux = None
    if m.HasField("linux"):
        sc = None
        if m.linux.HasField("security_context"):
            s = m.linux.security_context
            sc = LinuxContainerSecurityContext(
                privileged=s.privileged,
                run_as_user=_opt_int(s, "run_as_user"),
                run_as_group=_opt_int(s, "run_as_group"),
                readonly_rootfs=s.readonly_rootfs,
            )
        linux = LinuxContainerConfig(
            resources=resources_from_pb(m.linux.resources) if m.linux.HasField("resources") else None,
            security_context=sc,
        )
    return ContainerConfig(
        metadata=container_metadata_from_pb(m.metadata),
        image=image_spec_from_pb(m.image),
        command=list(m.command),
        args=list(m.args),
        working_dir=m.working_dir,
        envs=[KeyValue(e.key, e.value) for e in m.envs],
        mounts=[mount_from_pb(x) for x in m.mounts],
        labels=_map(m.labels),
        annotations=_map(m.annotations),
        log_path=m.log_path,
        stdin=m.stdin,
        stdin_once=m.stdin_once,
        tty=m.tty,
        linux=linux,
    )


def container_to_pb(c: Container) -> pb.Container:
    return pb.Container(
        id=c.id,
        pod_sandbox_id=c.pod_sandbox_id,
        metadata=container_metadata_to_pb(c.metadata),
        image=image_spec_to_pb(c.image),
        image_ref=c.image_ref,
        state=pb.ContainerState.Value(c.state.name),
        created_at=c.created_at,
        labels=c.labels,
        annotations=c.annotations,
    )


def container_from_pb(m: pb.Container) -> Container:
    return Container(
        id=m.id,
        pod_sandbox_id=m.pod_sandbox_id,
        metadata=container_metadata_from_pb(m.metadata),
        image=image_spec_from_pb(m.image),
        image_ref=m.image_ref,
        state=ContainerState(m.state),
        created_at=m.created_at,
        labels=_map(m.labels),
        annotations=_map(m.annotations),
    )


def container_status_to_pb(s: ContainerStatus) -> pb.ContainerStatus:
    msg = pb.ContainerStatus(
        id=s.id,
        metadata=container_metadata_to_pb(s.metadata),
        state=pb.ContainerState.Value(s.state.name),
        created_at=s.created_at,
        started_at=s.started_at,
        finished_at=s.finished_at,
        exit_code=s.exit_code,
        image_ref=s.image_ref,
        reason=s.reason,
        message=s.message,
        labels=s.labels,
        annotations=s.annotations,
        mounts=[mount_to_pb(m) for m in s.mounts],
        log_path=s.log_path,
    )
    if s.image is not None:
        msg.image.CopyFrom(image_spec_to_pb(s.image))
    if s.resources is not None:
        msg.resources.linux.CopyFrom(resources_to_pb(s.resources))
    return msg


def container_status_from_pb(m: pb.ContainerStatus) -> ContainerStatus:
    return ContainerStatus(
        id=m.id,
        metadata=container_metadata_from_pb(m.metadata),
        state=ContainerState(m.state),
        created_at=m.created_at,
        started_at=m.started_at,
        finished_at=m.finished_at,
        exit_code=m.exit_code,
        image=image_spec_from_pb(m.image) if m.HasField("image") else None,
        image_ref=m.image_ref,
        reason=m.reason,
        message=m.message,
        labels=_map(m.labels),
        annotations=_map(m.annotations),
        mounts=[mount_from_pb(x) for x in m.mounts],
        log_path=m.log_path,
        resources=resources_from_pb(m.resources.linux)
        if m.HasField("resources") and m.resources.HasField("linux")
        else None,
    )


def container_filter_to_pb(f: ContainerFilter) -> pb.ContainerFilter:
    msg = pb.ContainerFilter(id=f.id, pod_sandbox_id=f.pod_sandbox_id, label_selector=f.label_selector)
    if f.state is not None:
        msg.state.state = pb.ContainerState.Value(f.state.name)
    return msg


def container_filter_from_pb(m: pb.ContainerFilter) -> ContainerFilter:
    return ContainerFilter(
        id=m.id,
        state=ContainerState(m.state.state) if m.HasField("state") else None,
        pod_sandbox_id=m.pod_sandbox_id,
        label_selector=_map(m.label_selector),
    )


def stats_filter_to_pb(f: ContainerStatsFilter) -> pb.ContainerStatsFilter:
    return pb.ContainerStatsFilter(id=f.id, pod_sandbox_id=f.pod_sandbox_id, label_selector=f.label_selector)


def stats_filter_from_pb(m: pb.ContainerStatsFilter) -> ContainerStatsFilter:
    return ContainerStatsFilter(id=m.id, pod_sandbox_id=m.pod_sandbox_id, label_selector=_map(m.label_selector))


def stats_to_pb(s: ContainerStats) -> pb.ContainerStats:
    a = s.attributes
    msg = pb.ContainerStats(
        attributes=pb.ContainerAttributes(
            id=a.id, metadata=container_metadata_to_pb(a.metadata), labels=a.labels, annotations=a.annotations
        )
    )
    if s.cpu is not None:
        msg.cpu.timestamp = s.cpu.timestamp
        if s.cpu.usage_core_nano_seconds is not None:
            msg.cpu.usage_core_nano_seconds.value = s.cpu.usage_core_nano_seconds
        if s.cpu.usage_nano_cores is not None:
            msg.cpu.usage_nano_cores.value = s.cpu.usage_nano_cores
    if s.memory is not None:
        msg.memory.timestamp = s.memory.timestamp
        for name in ("working_set_bytes", "rss_bytes", "usage_bytes"):
            if (value := getattr(s.memory, name)) is not None:
                getattr(msg.memory, name).value = value
    return msg


def stats_from_pb(m: pb.ContainerStats) -> ContainerStats:
    a = m.attributes
    return ContainerStats(
        attributes=ContainerAttributes(
            id=a.id,
            metadata=container_metadata_from_pb(a.metadata),
            labels=_map(a.labels),
            annotations=_map(a.annotations),
        ),
        cpu=CpuUsage(
            m.cpu.timestamp,
            usage_core_nano_seconds=_opt_int(m.cpu, "usage_core_nano_seconds"),
            usage_nano_cores=_opt_int(m.cpu, "usage_nano_cores"),
        )
        if m.HasField("cpu")
        else None,
        memory=MemoryUsage(
            m.memory.timestamp,
            working_set_bytes=_opt_int(m.memory, "working_set_bytes"),
            rss_bytes=_opt_int(m.memory, "rss_bytes"),
            usage_bytes=_opt_int(m.memory, "usage_bytes"),
        )
        if m.HasField("memory")
        else None,
    )


def exec_request_to_pb(r: ExecRequest) -> pb.ExecRequest:
    return pb.ExecRequest(
        container_id=r.container_id, cmd=r.cmd, tty=r.tty, stdin=r.stdin, stdout=r.stdout, stderr=r.stderr
    )


def exec_request_from_pb(m: pb.ExecRequest) -> ExecRequest:
    return ExecRequest(
        container_id=m.container_id, cmd=list(m.cmd), tty=m.tty, stdin=m.stdin, stdout=m.stdout, stderr=m.stderr
    )


# -- runtime --------------------------------------------------------------------------------------------------


def version_to_pb(v: VersionResponse) -> pb.VersionResponse:
    return pb.VersionResponse(
        version=v.version,
        runtime_name=v.runtime_name,
        runtime_version=v.runtime_version,
        runtime_api_version=v.runtime_api_version,
    )


def version_from_pb(m: pb.VersionResponse) -> VersionResponse:
    return VersionResponse(m.version, m.runtime_name, m.runtime_version, m.runtime_api_version)


def status_to_pb(s: StatusResponse) -> pb.StatusResponse:
    return pb.StatusResponse(
        status=pb.RuntimeStatus(
            conditions=[
                pb.RuntimeCondition(type=c.type, status=c.status, reason=c.reason, message=c.message)
                for c in s.status.conditions
            ]
        ),
        info=s.info,
    )


def status_from_pb(m: pb.StatusResponse) -> StatusResponse:
    return StatusResponse(
        RuntimeStatus([RuntimeCondition(c.type, c.status, c.reason, c.message) for c in m.status.conditions]),
        _map(m.info),
    )


# -- images ---------------------------------------------------------------------------------------------------


def image_to_pb(i: Image) -> pb.Image:
    msg = pb.Image(
        id=i.id, repo_tags=i.repo_tags, repo_digests=i.repo_digests, size=i.size, username=i.username, pinned=i.pinned
    )
    if i.uid is not None:
        msg.uid.value = i.uid
    if i.spec is not None:
        msg.spec.CopyFrom(image_spec_to_pb(i.spec))
    return msg


def image_from_pb(m: pb.Image) -> Image:
    return Image(
        id=m.id,
        repo_tags=list(m.repo_tags),
        repo_digests=list(m.repo_digests),
        size=m.size,
        uid=_opt_int(m, "uid"),
        username=m.username,
        spec=image_spec_from_pb(m.spec) if m.HasField("spec") else None,
        pinned=m.pinned,
    )


def image_filter_to_pb(f: ImageFilter) -> pb.ImageFilter:
    return pb.ImageFilter(image=image_spec_to_pb(f.image)) if f.image else pb.ImageFilter()


def image_filter_from_pb(m: pb.ImageFilter) -> ImageFilter:
    return ImageFilter(image=image_spec_from_pb(m.image) if m.HasField("image") and m.image.image else None)


def auth_to_pb(a: AuthConfig) -> pb.AuthConfig:
    return pb.AuthConfig(
        username=a.username,
        password=a.password,
        auth=a.auth,
        server_address=a.server_address,
        identity_token=a.identity_token,
        registry_token=a.registry_token,
    )


def auth_from_pb(m: pb.AuthConfig) -> AuthConfig:
    return AuthConfig(
        username=m.username,
        password=m.password,
        auth=m.auth,
        server_address=m.server_address,
        identity_token=m.identity_token,
        registry_token=m.registry_token,
    )
