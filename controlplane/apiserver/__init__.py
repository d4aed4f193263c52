"""ccmkit's Kubernetes API server: the registry of kinds, the REST handlers, watch fan-out and the app factory."""

from controlplane.apiserver.app import ServerOptions, ServerState, create_app
from controlplane.apiserver.server import ApiServer

__all__ = ["ApiServer", "ServerOptions", "ServerState", "create_app"]
