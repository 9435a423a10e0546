"""The Service informer's news for the reconciler: the cache is current again for a key, the addresses of
a Service of ours that was deleted, and whether an event is our own write coming back."""

from __future__ import annotations

from collections.abc import Callable

from ..runtime.kube.client import JsonObj
from ..runtime.store import resource_version
from .mapping import ServiceKey, service_key

__all__ = ["ServiceNews"]

# (key, deleted Service or None, current Service or None) -> whether current is our last write's result
Changed = Callable[[ServiceKey, JsonObj | None, JsonObj | None], bool]


class ServiceNews:
    """An informer handler, first on the Service informer, so that :meth:`take_echo` can tell the handlers
    after it about the same event."""

    def __init__(self, changed: Changed) -> None:
        self._changed = changed
        # (key, resourceVersion) of the event being delivered now, when it is our own write coming back.
        self._echo: tuple[ServiceKey, str] | None = None

    def _note(self, obj: JsonObj, *, deleted: bool) -> None:
        self._echo = None
        key = service_key(obj)
        if key is not None and self._changed(key, obj if deleted else None, None if deleted else obj):
            self._echo = (key, resource_version(obj))

    def on_add(self, obj: JsonObj) -> None:
        self._note(obj, deleted=False)

    def on_update(self, old: JsonObj, new: JsonObj) -> None:
        self._note(new, deleted=False)

    def on_delete(self, obj: JsonObj) -> None:
        self._note(obj, deleted=True)

    def take_echo(self, service: JsonObj) -> bool:
        """Whether the Service event being delivered is exactly the object our last write of its key
        returned. A reconcile of it would find what that write made, so it can change nothing: every other
        change (a ModuleDeployment's, anyone's edit of the Service) comes with an event of its own."""
        echo, self._echo = self._echo, None
        key = service_key(service)
        return echo is not None and key is not None and echo == (key, resource_version(service))
