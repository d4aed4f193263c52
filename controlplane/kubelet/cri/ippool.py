"""Pod IP allocation for the runtimes that assign addresses themselves (simulated and process).

Addresses come from one CIDR per runtime, lowest free first, and go back to the pool when a sandbox is removed,
as a CNI host-local IPAM would. Addresses ending in .0 or .255 are skipped everywhere in the range, so no pod
ever gets an address that looks like a network or broadcast address to a human or to a picky client.
"""

from __future__ import annotations

import heapq
import ipaddress

from .api import CRIError


class IPPoolExhaustedError(CRIError):
    code = "RESOURCE_EXHAUSTED"


class IPPool:
    def __init__(self, cidr: str) -> None:
        self.network = ipaddress.IPv4Network(cidr, strict=False)
        self._base = int(self.network.network_address)
        self._size = self.network.num_addresses
        self._next = 0  # offsets below this have been handed out at least once
        self._free: list[int] = []  # released offsets, reused lowest first
        self._in_use: set[int] = set()

    def __len__(self) -> int:
        return len(self._in_use)

    def allocate(self) -> str:
        if self._free:
            offset = heapq.heappop(self._free)
        else:
            while self._next < self._size and (self._base + self._next) & 0xFF in (0, 255):
                self._next += 1
            if self._next >= self._size:
                raise IPPoolExhaustedError(f"no free address left in {self.network}")
            offset = self._next
            self._next += 1
        self._in_use.add(offset)
        return str(ipaddress.IPv4Address(self._base + offset))

    def release(self, ip: str) -> None:
        offset = int(ipaddress.IPv4Address(ip)) - self._base
        if offset in self._in_use:
            self._in_use.remove(offset)
            heapq.heappush(self._free, offset)
