"""Every reason this controller reports: on the ``Ready`` condition of ``status.moduleService`` and on
Events. Users' alerts and scripts match on them (docs/contracts.md lists each; a test holds the two
together)."""

from __future__ import annotations

__all__ = [
    "ADDRESS_CHANGED",
    "ADOPTED",
    "CONDITION_REASONS",
    "CREATED",
    "DELETED",
    "DISABLED",
    "EVENT_REASONS",
    "FIGHT",
    "INVALID",
    "NAME_CONFLICT",
    "PENDING",
    "PORT_CONFLICT",
    "READY",
    "UPDATED",
    "WARNING_REASONS",
    "WRITE_FAILED",
]

# The Ready condition (and, where the CRD prunes status.moduleService, an Event each time it changes).
READY = "ServiceReady"
DISABLED = "ServiceDisabled"
PENDING = "ServicePending"  # transient: never sent as an Event
NAME_CONFLICT = "NameConflict"
PORT_CONFLICT = "PortConflict"
INVALID = "InvalidSpec"
WRITE_FAILED = "ServiceWriteFailed"

# Events only: what the controller did to the Service.
CREATED = "ServiceCreated"
UPDATED = "ServiceUpdated"
DELETED = "ServiceDeleted"
ADOPTED = "ServiceAdopted"
FIGHT = "ServiceFight"  # another writer keeps undoing our Service writes
ADDRESS_CHANGED = "ServiceAddressChanged"  # a re-created Service could not keep its clusterIP/nodePort

CONDITION_REASONS = (READY, DISABLED, PENDING, NAME_CONFLICT, PORT_CONFLICT, INVALID, WRITE_FAILED)
EVENT_REASONS = (CREATED, UPDATED, DELETED, ADOPTED, FIGHT, ADDRESS_CHANGED, READY, DISABLED, NAME_CONFLICT,
                 PORT_CONFLICT, INVALID, WRITE_FAILED)
# Condition reasons that are also sent as a Warning Event when a ModuleDeployment enters them (a refused
# write has its own Warning, ServiceWriteFailed, sent by the write itself).
WARNING_REASONS = frozenset({NAME_CONFLICT, PORT_CONFLICT, INVALID})
