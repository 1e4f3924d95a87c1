"""Where jobs run: a Kubernetes cluster or this machine."""
