"""The domain's own metrics: which API identity this process serves, and what it can do there.

Label values are the profile's three strings, fixed for the life of the process: no object names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from .profiles import Profile

__all__ = ["DomainMetrics"]


class DomainMetrics:
    def __init__(self, registry: CollectorRegistry, profile: Profile) -> None:
        info = Gauge(
            "moduleservice_api_info",
            "The ModuleDeployment API this controller serves (always 1): profile, group, version and the "
            "Pod label prefix.",
            ["profile", "group", "version", "label_prefix"], registry=registry,
        )
        info.labels(profile=profile.name, group=profile.group, version=profile.version,
                    label_prefix=profile.label_prefix).set(1)
        self.crd_served = Gauge(
            "moduleservice_crd_served",
            "1 while the ModuleDeployment CRD is installed, established and serves our version; 0 while "
            "the controller waits for it.", registry=registry,
        )
        self.status_pruned = Gauge(
            "moduleservice_status_pruned",
            "1 when the CRD cannot store status.moduleService (the API server prunes it): status is then "
            "reported through Events only.", registry=registry,
        )

    def set_crd_served(self, served: bool) -> None:
        self.crd_served.set(1 if served else 0)

    def set_status_pruned(self, pruned: bool) -> None:
        self.status_pruned.set(1 if pruned else 0)
