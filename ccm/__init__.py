"""ccmkit's cloud-controller-manager: the provider contract, providers and the cloud controllers."""
