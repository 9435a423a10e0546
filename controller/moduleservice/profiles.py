"""API identity: which ModuleDeployment API group/version and which Pod label prefix this controller serves.

The same controller serves the seed's CRD and real Koupleless installs; only these three values differ.
Explicit values override the chosen preset. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ..runtime.errors import ConfigError
from ..runtime.kube.resources import Resource

__all__ = ["DEFAULT_PROFILE", "PROFILES", "Profile", "resolve_profile"]

MD_PLURAL = "moduledeployments"
MD_KIND = "ModuleDeployment"

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+$")
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/$")


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    group: str
    version: str
    label_prefix: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    @property
    def crd_name(self) -> str:
        return f"{MD_PLURAL}.{self.group}"

    @property
    def resource(self) -> Resource:
        return Resource(self.group, self.version, MD_PLURAL, MD_KIND)


PROFILES: dict[str, Profile] = {
    p.name: p for p in (
        # The seed's documents; no released Koupleless serves this group.
        Profile("seed", "koupleless.alipay.com", "v1alpha1", "module.koupleless.alipay.com/"),
        # Koupleless' module-controller since V1.0.0.
        Profile("koupleless", "koupleless.io", "v1alpha1", "module.koupleless.io/"),
        # Its predecessor.
        Profile("sofa-serverless", "serverless.alipay.com", "v1alpha1", "module.serverless.alipay.com/"),
    )
}
DEFAULT_PROFILE = "seed"


def resolve_profile(name: str = DEFAULT_PROFILE, *, group: str | None = None, version: str | None = None,
                    label_prefix: str | None = None) -> Profile:
    """The preset ``name`` with any explicit value put over it; raises ConfigError naming the flag."""
    base = PROFILES.get(name)
    if base is None:
        raise ConfigError(f"--profile must be one of {', '.join(PROFILES)}, got {name!r}")
    profile = replace(base, group=group or base.group, version=version or base.version,
                      label_prefix=label_prefix or base.label_prefix)
    # A CRD's group must contain a dot (apiextensions validation).
    if len(profile.group) > 253 or not _DNS_SUBDOMAIN.match(profile.group):
        raise ConfigError(f"--api-group {profile.group!r} must be a DNS subdomain with at least one dot")
    if len(profile.group) > 63:
        # It is the value of the label that tells whose a Service is (desired.GROUP_LABEL).
        raise ConfigError(f"--api-group {profile.group!r} must be at most 63 characters long")
    if len(profile.version) > 63 or not _DNS_LABEL.match(profile.version):
        raise ConfigError(f"--api-version {profile.version!r} must be a version such as v1alpha1")
    if len(profile.label_prefix) > 254 or not _LABEL_PREFIX.match(profile.label_prefix):
        raise ConfigError(
            f"--module-label-prefix {profile.label_prefix!r} must be a DNS subdomain followed by '/'")
    return profile
