"""A small name -> object registry with "did you mean" errors, shared by models and datasets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from quide_search.errors import ConfigError, did_you_mean

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects registered under unique lower-case names.

    Args:
        kind: What the registry holds ("model", "dataset"), used in messages.
        flag: The CLI flag that selects from it, named in errors.
    """

    def __init__(self, kind: str, flag: str) -> None:
        self._kind = kind
        self._flag = flag
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Return a decorator that registers its argument under ``name``."""

        def decorator(obj: T) -> T:
            key = name.lower()
            if key in self._items:
                raise ValueError(f"{self._kind} {name!r} is already registered")
            self._items[key] = obj
            return obj

        return decorator

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for plug-ins and tests that register temporary entries)."""
        self._items.pop(name.lower(), None)

    def get(self, name: str) -> T:
        """Return the object registered under ``name``.

        Raises:
            ConfigError: For an unknown name, with close matches and the full list.
        """
        key = name.lower()
        if key not in self._items:
            raise ConfigError(
                f"{self._flag} must name a registered {self._kind}, but got {name!r}."
                + did_you_mean(key, self._items)
                + f" Registered: {', '.join(sorted(self._items))}."
            )
        return self._items[key]

    def names(self) -> list[str]:
        """Return the registered names, sorted."""
        return sorted(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items
