"""A paginated LIST, transformed page by page (client-go's pager with FullListIfExpired)."""

from __future__ import annotations

from collections.abc import Callable

from .kube.client import JsonObj, KubeClient
from .kube.errors import Gone, TransportError

__all__ = ["LIST_TIMEOUT", "list_all"]

LIST_TIMEOUT = 120.0  # per page


async def list_all(
    client: KubeClient, path: str, params: dict[str, str | int | bool], *, kind: str,
    transform: Callable[[JsonObj], JsonObj], keep: Callable[[JsonObj], bool] | None,
    on_page: Callable[[], None],
) -> tuple[list[JsonObj], str]:
    """Every object of ``path`` (transformed, and those ``keep`` accepts), and the list's resourceVersion.

    Transformed page by page: holding every full object of a 30,000-Pod list until the end would grow the
    heap to the size of the full list, and CPython keeps that memory. ``on_page`` is called per page (the
    informer counts it as its loop turning)."""
    items: list[JsonObj] = []
    list_rv = ""
    while True:
        try:
            page = await client.request("GET", path, params=params, timeout=LIST_TIMEOUT)
        except Gone:
            if "continue" not in params and "resourceVersion" not in params:
                raise
            if "continue" in params:
                # The continue token expired mid-list: fall back to one unpaginated list (client-go
                # FullListIfExpired).
                items.clear()
                params = {k: v for k, v in params.items() if k not in ("continue", "limit")}
            else:
                # Our RV is too old for the server to serve "not older than" (client-go's isExpiredError):
                # ask for the latest state instead.
                params.pop("resourceVersion")
                params.pop("resourceVersionMatch", None)
            continue
        on_page()
        page_items = page.get("items")
        if page_items is None and "metadata" not in page:
            raise TransportError(f"LIST {path}: the response is not a list")
        for raw in page_items or ():
            raw.setdefault("kind", kind)
            obj = transform(raw)
            if keep is None or keep(obj):
                items.append(obj)
        meta = page.get("metadata") or {}
        list_rv = str(meta.get("resourceVersion") or list_rv)
        token = meta.get("continue")
        if not token:
            return items, list_rv
        params["continue"] = token
        # A continued page carries the first page's snapshot; resourceVersion must not be repeated.
        params.pop("resourceVersion", None)
        params.pop("resourceVersionMatch", None)
