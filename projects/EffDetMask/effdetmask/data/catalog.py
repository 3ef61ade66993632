"""Dataset and metadata catalogs: names -> lazy loaders of dataset dicts, names -> metadata.

Registration stores a function and never does I/O; the function runs on ``DatasetCatalog.get``.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any, Callable, Dict, List

logger = logging.getLogger(__name__)

__all__ = ["DatasetCatalog", "MetadataCatalog", "Metadata"]


class _DatasetCatalog:
    """Maps dataset names to zero-argument functions returning a list of dataset dicts."""

    def __init__(self) -> None:
        self._loaders: Dict[str, Callable[[], List[dict]]] = {}

    def register(self, name: str, loader: Callable[[], List[dict]]) -> None:
        if not callable(loader):
            raise TypeError(f"dataset {name!r}: the loader must be callable, got {type(loader)}")
        if name in self._loaders:
            raise KeyError(f"dataset {name!r} is already registered")
        self._loaders[name] = loader

    def get(self, name: str) -> List[dict]:
        try:
            loader = self._loaders[name]
        except KeyError:
            known = ", ".join(self.list()) or "none"
            raise KeyError(f"dataset {name!r} is not registered; registered: {known}") from None
        dicts = loader()
        if not dicts:
            raise ValueError(f"dataset {name!r} is empty: its loader returned no images")
        return dicts

    def list(self) -> List[str]:
        return sorted(self._loaders)

    def remove(self, name: str) -> None:
        self._loaders.pop(name)

    def __contains__(self, name: str) -> bool:
        return name in self._loaders


class Metadata(SimpleNamespace):
    """Attributes of a dataset (class names, attribute names and id maps, colours, json_file...)."""

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def set(self, **kwargs: Any) -> "Metadata":
        for k, v in kwargs.items():
            if hasattr(self, k) and getattr(self, k) != v:
                raise ValueError(f"metadata {k!r} is already set to a different value")
            setattr(self, k, v)
        return self


class _MetadataCatalog:
    def __init__(self) -> None:
        self._meta: Dict[str, Metadata] = {}

    def get(self, name: str) -> Metadata:
        if name not in self._meta:
            self._meta[name] = Metadata(name=name)
        return self._meta[name]

    def remove(self, name: str) -> None:
        self._meta.pop(name, None)


DatasetCatalog = _DatasetCatalog()
MetadataCatalog = _MetadataCatalog()
