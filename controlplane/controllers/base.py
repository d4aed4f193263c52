"""What a controller is in ccmkit: a named, level-based reconcile loop over shared informers.

Mirrors controller-runtime's shape without its builder machinery. A controller declares the informers it reads,
maps their events to keys (usually `namespace/name` of the object it owns), and `reconcile(key)` makes the world
match the desired state read from the informer caches. The manager (manager.py) owns the informers, the work queue
per controller (client-go semantics), the workers, retries with rate limiting, and leader election.

Two optional hooks go beyond the protocol: ``setup`` may be a coroutine function (for controllers that must ask the
API server what to watch, like the garbage collector), and a controller may define ``async def run(self)``, a
long-running loop the manager starts after the informers sync and cancels on stop (periodic checks such as node
health monitoring). A controller is built per leadership term by its factory, so its in-memory state starts fresh.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from controlplane.client import ApiClient, Clock, RealClock, SharedInformerFactory

T = TypeVar("T")


@dataclass(frozen=True)
class Result:
    """What a reconcile asks for next: nothing, or another look after ``requeue_after`` seconds.

    Raising an exception from reconcile means "failed": the key is retried with rate-limited backoff.
    """

    requeue_after: float | None = None


DONE = Result()


class RetryLater(Exception):
    """Raised from reconcile for an expected, temporary failure (a full address pool, content still being
    deleted): the key is retried with rate-limited backoff like any failure, but logged without a traceback."""


@dataclass
class ControllerContext:
    """What the manager hands a controller factory: settings and the clock.

    ``options`` holds kube-controller-manager's flags that tune controllers, by their Python name (for example
    ``node_monitor_grace_period`` for ``--node-monitor-grace-period``); a controller reads what it knows with a
    default, so one mapping serves every controller and a new controller needs no change here.
    """

    options: Mapping[str, Any] = field(default_factory=dict)
    clock: Clock = field(default_factory=RealClock)

    def option(self, name: str, default: T) -> T:
        value = self.options.get(name)
        return default if value is None else value


class Enqueue(Protocol):
    """Adds a key to the controller's work queue (deduplicated)."""

    def __call__(self, key: str, after: float | None = None) -> None: ...


class Controller(Protocol):
    """One controller. The manager calls ``setup`` once, before informers sync, then ``reconcile`` per key."""

    name: str  # as in kube-controller-manager's --controllers list, e.g. "deployment", "namespace"
    workers: int

    def setup(self, client: ApiClient, informers: SharedInformerFactory, enqueue: Enqueue) -> None | Awaitable[None]:
        """Get the informers this controller reads from the factory and register event handlers that enqueue keys.
        May be a coroutine function (the manager awaits it)."""
        ...

    async def reconcile(self, key: str) -> Result:
        ...
