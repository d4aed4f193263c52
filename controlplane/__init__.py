"""ccmkit's lightweight Kubernetes control plane: store, API server, client, controllers, scheduler, kubelets."""
