"""Kubernetes deployment: kustomize renders, policy, RBAC, ZenML-built pods, the remote stack."""
