"""Name -> object registries (methods, criteria, distributions, models, datasets).

Each registry is a single instance filled at import time by decorators; adding an
entry never requires touching another one.
"""
from __future__ import annotations

from typing import Callable, Dict, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection that refuses duplicates and explains unknown names."""

    def __init__(self, kind: str, stamp_name: bool = False):
        self.kind = kind
        self._items: Dict[str, T] = {}
        # methods: the registered name is the class's ``name`` (written once, here)
        self.stamp_name = stamp_name

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            self.add(name, obj)
            return obj

        return add

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        if self.stamp_name:
            obj.name = name
        self._items[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} '{name}'; allowed: {', '.join(self.names())}"
            ) from None

    def names(self) -> list:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
