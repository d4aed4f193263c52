"""The node agent: registration, lease heartbeats and the pod sync loop, speaking only CRI to its runtime (cri/).

``pool.KubeletPool`` runs one or many nodes in a process (one pod informer, one lease loop, one HTTP server);
``kubelet.Kubelet`` is one node's pod lifecycle; ``server`` serves logs, exec and /stats/summary; ``apiproxy`` is
the API server's side of pods/log and pods/exec; ``runtimes`` picks a runtime by name and is ``ccmkit up``'s
kubelet component. The modules import nothing heavy at package import, since the API server imports ``apiproxy``.
"""
