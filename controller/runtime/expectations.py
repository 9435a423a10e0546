"""Read-your-writes over a lagging cache: what we wrote stands in for the cache until the cache moves.

A write's response is newer than the informer's store until the watch delivers it. Without a memory of
it, a reconcile triggered meanwhile would see the old state and write again (a duplicate POST meets
AlreadyExists, a PATCH meets a 409). The ReplicaSet controller calls this "expectations".

The cache is trusted again as soon as it says anything new about the key: any event for it (ours arriving,
or someone else's change or delete after ours), or a relist (which may have folded a create and a delete
into nothing at all). Comparing resourceVersions instead would be wrong in exactly that case: after our
create and a foreign delete, the store shows "no object" again, the very state it showed before the write.

Protocol, one key written by at most one task at a time (the work queue guarantees it)::

    token = expectations.begin(key)      # before the request
    ... response = await write() ...
    expectations.settle(token, response) # after a success; ignored if the cache moved meanwhile
    expectations.view(key, cached)       # what to reconcile against

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Expectations", "Token"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_UNSET = object()


@dataclass(eq=False, slots=True)
class Token(Generic[K]):
    key: K
    value: object = field(default=_UNSET)


class Expectations(Generic[K, V]):
    def __init__(self) -> None:
        self._entries: dict[K, Token[K]] = {}

    def begin(self, key: K) -> Token[K]:
        """A write of ``key`` is about to be sent; any earlier expectation of it is void."""
        token: Token[K] = Token(key)
        self._entries[key] = token
        return token

    def settle(self, token: Token[K], value: V) -> None:
        """The write succeeded with ``value`` (None: the object is gone). Kept only if the cache has said
        nothing about the key since :meth:`begin`: if it has, the cache already shows our write or
        something newer."""
        if self._entries.get(token.key) is token:
            token.value = value

    def cancel(self, token: Token[K]) -> None:
        """The write failed: nothing to expect."""
        if self._entries.get(token.key) is token:
            del self._entries[token.key]

    def observed(self, key: K) -> Token[K] | None:
        """The cache delivered an event for ``key``: it is current again for that key. Returns the
        expectation that ends (``value`` is what we wrote, or unset while the write is on the wire), so the
        caller can tell whether the event is that write coming back."""
        return self._entries.pop(key, None)

    def reset(self) -> dict[K, V]:
        """The cache relisted: it is current for every key. Returns what we had written and were still
        waiting to see, per key: the caller may look at those keys again (a relist that folded our write
        and someone's undo of it sends no event)."""
        settled = {key: token.value for key, token in self._entries.items() if token.value is not _UNSET}
        self._entries.clear()
        return settled  # type: ignore[return-value]

    def view(self, key: K, cached: V) -> V:
        """What we last wrote for ``key`` while the cache has not caught up with it, else ``cached``."""
        token = self._entries.get(key)
        if token is None or token.value is _UNSET:
            return cached
        return token.value  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self._entries)
