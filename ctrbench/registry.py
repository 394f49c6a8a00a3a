"""One small generic registry: name -> object, with did-you-mean errors and glob selection."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from ctrbench.errors import UnknownNameError

T = TypeVar("T")


def did_you_mean(kind: str, name: str, known: Iterable[str],
                 plural: str | None = None) -> UnknownNameError:
    """Build the error for an unknown ``name``, with close matches and the full list
    (``plural``: ``kind``'s plural where it is not ``kind + "s"``)."""
    known = sorted(known)
    same_but_case = [k for k in known if k.lower() == name.lower()]  # names are case-sensitive
    close = same_but_case or difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    message = f"Unknown {kind} {name!r}."
    if close:
        message += f" Did you mean: {', '.join(close)}?"
    return UnknownNameError(message, hint=f"known {plural or kind + 's'}: "
                                          f"{', '.join(known) or '(none)'}")


class Registry(Generic[T]):
    """A mapping from names to objects; duplicate names raise, misses suggest close names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@registry.register("din")`` on a class or factory."""

        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise did_you_mean(self.kind, name, self._items) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def select(self, pattern: str) -> list[str]:
        """Names matching a glob (``mian*``); an exact name that is unknown raises."""
        if any(ch in pattern for ch in "*?["):
            return sorted(fnmatch.filter(self._items, pattern))
        self.get(pattern)
        return [pattern]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
