"""Deployment renderers: Kubernetes manifests and a compose stack, both from the pool plan."""
