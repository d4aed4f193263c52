"""The node agent: registration, lease heartbeats and the pod sync loop, speaking only CRI to its runtime (cri/)."""
