"""DefaultPreemption: the PostFilter plugin; the algorithm lives in ``controlplane.scheduler.preemption``."""

from ..preemption import DEFAULT_ARGS, NAME, DefaultPreemption

__all__ = ["DefaultPreemption", "DEFAULT_ARGS", "NAME"]
