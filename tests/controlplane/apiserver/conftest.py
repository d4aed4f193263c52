"""Fixtures for the API server's acceptance tests: the official Python client and plain HTTP, both pointed at the
`apiserver` fixture's real server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import kubernetes
import pytest

from controlplane.testing import ThreadedApiServer


@pytest.fixture
def k8s(apiserver: ThreadedApiServer) -> Iterator[kubernetes.client.ApiClient]:
    """The official client, configured by host only, exactly as a user points it at a cluster."""
    config = kubernetes.client.Configuration(host=apiserver.url)
    with kubernetes.client.ApiClient(config) as api:
        yield api


@pytest.fixture
def http(apiserver: ThreadedApiServer) -> Iterator[httpx.Client]:
    """Plain HTTP, for requests no well-behaved client would send (malformed bodies, odd methods)."""
    with httpx.Client(base_url=apiserver.url, timeout=30) as client:
        yield client
