"""The scheduler: a snapshot of nodes and pods kept in flat arrays, the scheduling queue, the plugin framework and
the default plugins, preemption and HTTP extenders, all as upstream kube-scheduler defines them.

The scheduling cycle (``core.Scheduler.schedule_one``) is pure CPU work over the snapshot; everything that talks to
the API server (binding, preemption deletes, volume binding) goes through small callback Protocols, so the same core
runs in-process in benchmarks and behind the async client in the control plane.
"""
