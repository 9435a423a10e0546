"""The ModuleDeployment resource. Its group and version are configuration (see profiles)."""

from __future__ import annotations

from ..runtime.kube.resources import Resource

__all__ = ["MODULE_DEPLOYMENTS"]

MODULE_DEPLOYMENTS = Resource("koupleless.alipay.com", "v1alpha1", "moduledeployments", "ModuleDeployment")
