"""Deployment helpers and configs: the local object store (SeaweedFS), container image, cluster configs."""
