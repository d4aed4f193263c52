"""Leader election on a coordination.k8s.io/v1 Lease, with client-go's rules, so only one of several managers acts.

Only the API server arbitrates: every write is a compare-and-swap on the Lease's resourceVersion, so two candidates
can never both succeed. As in client-go, a candidate judges a lease expired by its *own* clock — the time it last
saw the lease record change plus the record's leaseDurationSeconds — never by comparing the holder's renewTime with
local wall time, so clock skew between machines cannot make two leaders. A leader that cannot renew within
renew_deadline steps down; a leader that stops cleanly releases the lease (an empty holder) so the next one takes
over at once instead of after a lease duration.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from controlplane.client import AlreadyExists, ApiClient, ApiError, Clock, Conflict, NotFound, RealClock
from controlplane.client.resources import LEASES

log = logging.getLogger(__name__)

JITTER_FACTOR = 1.2  # client-go's JitterFactor: retries spread over [retry, retry * 2.2)


def default_identity() -> str:
    """client-go's convention for kube-controller-manager: the host name and a unique suffix."""
    return f"{socket.gethostname()}_{uuid.uuid4()}"


@dataclass
class LeaderElectionConfig:
    """--leader-elect-* as upstream, with upstream's defaults (seconds)."""

    name: str = "kube-controller-manager"
    namespace: str = "kube-system"
    identity: str = field(default_factory=default_identity)
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    release_on_cancel: bool = True

    def __post_init__(self) -> None:
        if not self.lease_duration > self.renew_deadline:
            raise ValueError("leaseDuration must be greater than renewDeadline")
        if not self.renew_deadline > JITTER_FACTOR * self.retry_period:
            raise ValueError("renewDeadline must be greater than retryPeriod*JitterFactor")
        if self.retry_period <= 0:
            raise ValueError("retryPeriod must be greater than zero")


def micro_time(when: dt.datetime | None = None) -> str:
    """metav1.MicroTime's wire format."""
    when = when or dt.datetime.now(dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


Callback = Callable[[], Awaitable[None]]


class LeaderElector:
    """Campaign for a lease, hold it while renewing, and call back on gaining and losing it.

    ``run()`` loops for ever (until cancelled): acquire, ``on_started_leading``, renew until a renewal fails for
    ``renew_deadline``, ``on_stopped_leading``, campaign again. Cancelling ``run`` releases the lease if
    ``release_on_cancel``; ``abandon()`` first makes it stop without releasing, as a crashed process would.
    """

    def __init__(
        self,
        client: ApiClient,
        config: LeaderElectionConfig,
        *,
        on_started_leading: Callback,
        on_stopped_leading: Callback,
        on_new_leader: Callable[[str], None] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.client = client
        self.config = config
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.on_new_leader = on_new_leader
        self.clock: Clock = clock or RealClock()
        self._observed_spec: dict[str, Any] | None = None
        self._observed_rv: str | None = None
        self._observed_time = 0.0
        self._leading = False
        self._reported_leader: str | None = None
        self._release = config.release_on_cancel
        self.last_renew: float | None = None  # clock time of the last successful acquire or renew, while leading

    @property
    def identity(self) -> str:
        return self.config.identity

    @property
    def is_leader(self) -> bool:
        return self._leading

    @property
    def leader(self) -> str | None:
        """The holder as last observed (may be this candidate)."""
        return (self._observed_spec or {}).get("holderIdentity") or None

    def abandon(self) -> None:
        """Make the next cancellation leave the lease as it is (to simulate a crash, or to hand over on purpose
        by expiry)."""
        self._release = False

    def healthy(self, slack: float = 20.0) -> bool:
        """client-go's HealthzAdaptor: unhealthy only if leading and the lease has not been renewed for longer than
        the lease duration plus ``slack``."""
        if not self._leading or self.last_renew is None:
            return True
        return self.clock.now() - self.last_renew <= self.config.lease_duration + slack

    async def run(self) -> None:
        try:
            while True:
                await self._acquire()
                self._leading = True
                log.info("%s became leader of %s/%s", self.identity, self.config.namespace, self.config.name)
                try:
                    await self.on_started_leading()
                    await self._renew()
                finally:
                    was_leading, self._leading = self._leading, False
                    if was_leading:
                        log.info("%s stopped leading %s/%s", self.identity, self.config.namespace, self.config.name)
                    # A cancellation here must still run the callback: shield it so stopping work completes.
                    await asyncio.shield(self.on_stopped_leading())
        except asyncio.CancelledError:
            if self._release:
                await asyncio.shield(self.release())
            raise

    async def _acquire(self) -> None:
        while True:
            try:
                if await self._try_acquire_or_renew():
                    return
            except Exception as exc:  # noqa: BLE001 - an unreachable API server is retried, never fatal
                log.warning("error acquiring lease %s/%s: %r", self.config.namespace, self.config.name, exc)
            await self.clock.sleep(self._jittered(self.config.retry_period))

    async def _renew(self) -> None:
        cfg = self.config
        while True:
            await self.clock.sleep(cfg.retry_period)
            deadline = self.clock.now() + cfg.renew_deadline
            # Retry every retry_period until a renewal succeeds or the renew deadline has passed (client-go's
            # PollImmediateUntil with a renewDeadline timeout).
            while True:
                remaining = deadline - self.clock.now()
                if remaining <= 0:
                    log.warning("%s failed to renew lease %s/%s within %.1fs", self.identity, cfg.namespace,
                                cfg.name, cfg.renew_deadline)
                    return
                try:
                    async with asyncio.timeout(remaining):
                        ok = await self._try_acquire_or_renew()
                except TimeoutError:
                    ok = False
                except Exception as exc:  # noqa: BLE001 - keep trying until the deadline
                    log.warning("error renewing lease %s/%s: %r", cfg.namespace, cfg.name, exc)
                    ok = False
                if ok:
                    break
                if not self._leading_by_record():
                    return  # someone else holds it now: no point waiting for the deadline
                await self.clock.sleep(min(cfg.retry_period, max(0.0, deadline - self.clock.now())))

    def _leading_by_record(self) -> bool:
        holder = (self._observed_spec or {}).get("holderIdentity")
        return not holder or holder == self.identity

    def _jittered(self, period: float) -> float:
        return period * (1.0 + random.random() * JITTER_FACTOR)

    def _observe(self, lease: dict[str, Any]) -> None:
        spec = dict(lease.get("spec") or {})
        if spec != self._observed_spec:
            self._observed_spec = spec
            self._observed_time = self.clock.now()
            holder = spec.get("holderIdentity") or ""
            if holder and holder != self._reported_leader:
                self._reported_leader = holder
                if self.on_new_leader is not None:
                    self.on_new_leader(holder)
        self._observed_rv = (lease.get("metadata") or {}).get("resourceVersion")

    def _record(self, old: dict[str, Any] | None) -> dict[str, Any]:
        now = micro_time()
        old = old or {}
        holding = old.get("holderIdentity") == self.identity
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, int(round(self.config.lease_duration))),
            "acquireTime": old.get("acquireTime") if holding and old.get("acquireTime") else now,
            "renewTime": now,
            "leaseTransitions": int(old.get("leaseTransitions") or 0) + (0 if holding or not old else 1),
        }
        return spec

    async def _try_acquire_or_renew(self) -> bool:
        cfg = self.config
        try:
            lease = await self.client.get(LEASES, cfg.name, cfg.namespace)
        except NotFound:
            spec = self._record(None)
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": cfg.name, "namespace": cfg.namespace}, "spec": spec}
            try:
                created = await self.client.create(LEASES, body, cfg.namespace)
            except (AlreadyExists, Conflict):
                return False
            self._observe(created)
            self.last_renew = self.clock.now()
            return True
        self._observe(lease)
        spec = self._observed_spec or {}
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or cfg.lease_duration)
        if holder and holder != self.identity and self._observed_time + duration > self.clock.now():
            return False  # held by someone else, and not expired by our own clock
        if holder != self.identity and self._leading:
            return False  # we lost it (someone took over); do not grab it back within this term
        updated = {**lease, "spec": {**spec, **self._record(spec)}}
        try:
            result = await self.client.update(LEASES, updated)
        except Conflict:
            return False
        self._observe(result)
        self.last_renew = self.clock.now()
        return True

    async def release(self) -> bool:
        """Give the lease up if we hold it: an empty holder lets the next candidate take it at once."""
        if not self._leading and (self._observed_spec or {}).get("holderIdentity") != self.identity:
            return False
        cfg = self.config
        try:
            lease = await self.client.get(LEASES, cfg.name, cfg.namespace)
            spec = dict(lease.get("spec") or {})
            if spec.get("holderIdentity") != self.identity:
                return False
            now = micro_time()
            spec = {"leaseDurationSeconds": 1, "acquireTime": now, "renewTime": now,
                    "leaseTransitions": int(spec.get("leaseTransitions") or 0)}
            await self.client.update(LEASES, {**lease, "spec": spec})
        except ApiError as exc:
            log.warning("releasing lease %s/%s failed: %s", cfg.namespace, cfg.name, exc)
            return False
        except Exception as exc:  # noqa: BLE001 - the API server may already be gone at shutdown
            log.warning("releasing lease %s/%s failed: %r", cfg.namespace, cfg.name, exc)
            return False
        self._leading = False
        log.info("%s released lease %s/%s", self.identity, cfg.namespace, cfg.name)
        return True
