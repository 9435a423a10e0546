"""A faithful emulator of Koupleless module-controller V1.0.0's behaviour toward ModuleDeployments and
``<module>-service`` (emulator.py), and the identity it runs as on the test control plane (identity.py).

Typical use in a test::

    async with running_upstream(controlplane, namespace) as upstream:
        ...
        assert upstream.deletes_refused == 0
"""

from .emulator import (
    DEFAULT_GROUP,
    DEFAULT_LABEL_PREFIX,
    DEFAULT_VERSION,
    MODULE_EXISTED,
    MODULE_REPLICASET_EXISTED,
    V1_USER_AGENT,
    ModuleControllerV1,
    Outcome,
    ServiceOp,
    go_module_deployment,
    run_module_controller_v1,
    upstream_service,
)
from .identity import (
    DEFAULT_NAMESPACE,
    DEFAULT_SERVICE_ACCOUNT,
    Identity,
    ensure_identity,
    release_v1_finalizers,
    request_token,
    running_upstream,
    upstream_client,
    v1_rules,
)

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_LABEL_PREFIX",
    "DEFAULT_NAMESPACE",
    "DEFAULT_SERVICE_ACCOUNT",
    "DEFAULT_VERSION",
    "MODULE_EXISTED",
    "MODULE_REPLICASET_EXISTED",
    "V1_USER_AGENT",
    "Identity",
    "ModuleControllerV1",
    "Outcome",
    "ServiceOp",
    "ensure_identity",
    "go_module_deployment",
    "release_v1_finalizers",
    "request_token",
    "run_module_controller_v1",
    "running_upstream",
    "upstream_client",
    "upstream_service",
    "v1_rules",
]
