"""One registry type for everything visae looks up by name: backbones, image sources, SAE families,
metrics, tasks and checkpoint formats.

```python
METRICS: Registry[type[Metric]] = Registry("metric")
METRICS.register_lazy("m1", "visae.metrics.m1_spatial:M1Spatial")   # imported on first lookup

@METRICS.register("m9")                                             # or METRICS.register("m9", M9)
class M9(Metric): ...

METRICS["m1"]            # the class; an unknown name raises the registry's error, listing the known names
```

A name is registered once: a second registration raises unless ``overwrite=True`` (a lazy entry is
replaced silently by the very object it points to, which is how an imported module registers itself).
Aliases resolve to their name; :meth:`Registry.listing` gives ``name — summary`` lines for ``visae info``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

from visae.errors import ConfigError, VisaeError

T = TypeVar("T")


@dataclass
class _Entry(Generic[T]):
    name: str
    value: T | None
    target: str | None
    """``"module:attr"`` still to import (None once resolved or when registered directly)."""
    summary: str


class Registry(Generic[T]):
    """Names → objects of one kind, with aliases and lazy ``"module:attr"`` entries.

    ``kind`` names the registry in messages ("metric", "SAE family"); ``error`` is the exception raised
    for an unknown or duplicate name; ``normalize`` folds names before lookup (e.g. ``str.lower``).
    """

    def __init__(self, kind: str, *, error: type[VisaeError] = ConfigError,
                 normalize: Callable[[str], str] | None = None) -> None:
        self.kind = kind
        self.error = error
        self._normalize = normalize or (lambda name: name)
        self._entries: dict[str, _Entry[T]] = {}
        self._aliases: dict[str, str] = {}

    # --- registration -------------------------------------------------------------------------------
    @overload
    def register(self, name: str, obj: None = None, *, aliases: Iterable[str] = (), summary: str = "",
                 overwrite: bool = False) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T, *, aliases: Iterable[str] = (), summary: str = "",
                 overwrite: bool = False) -> T: ...

    def register(self, name: str, obj: T | None = None, *, aliases: Iterable[str] = (), summary: str = "",
                 overwrite: bool = False) -> T | Callable[[T], T]:
        """Register ``obj`` under ``name`` (and ``aliases``); without ``obj``, return a decorator."""
        if obj is None:
            def decorator(value: T) -> T:
                self._add(name, value, None, aliases, summary, overwrite)
                return value

            return decorator
        self._add(name, obj, None, aliases, summary, overwrite)
        return obj

    def register_lazy(self, name: str, target: str, *, aliases: Iterable[str] = (), summary: str = "",
                      overwrite: bool = False) -> None:
        """Register ``"module:attr"``, imported on the first lookup of ``name``."""
        module, sep, attr = target.partition(":")
        if not sep or not module or not attr:
            raise ConfigError(f"{self.kind} {name!r}: lazy target {target!r} must read "
                              "'package.module:attribute'")
        self._add(name, None, target, aliases, summary, overwrite)

    def register_package(self, package: str, entries: Iterable[tuple[str, str, str]]) -> None:
        """Lazy entries ``(name, "module:attr", summary)`` whose modules live in ``package``."""
        for name, target, summary in entries:
            self.register_lazy(name, f"{package}.{target}", summary=summary)

    def _add(self, name: str, value: T | None, target: str | None, aliases: Iterable[str], summary: str,
             overwrite: bool) -> None:
        key = self._normalize(name)
        old = self._entries.get(key)
        if old is not None and not overwrite and not self._fulfils(old, value):
            raise self.error(f"{self.kind} {name!r} is already registered "
                             f"({old.target or _where(old.value)}); choose another name, or pass "
                             "overwrite=True to replace it")
        if key in self._aliases and not overwrite:
            raise self.error(f"{self.kind} {name!r} is already an alias of {self._aliases[key]!r}; choose "
                             "another name")
        folded_aliases = [self._normalize(alias) for alias in aliases]
        for alias, folded in zip(aliases, folded_aliases, strict=True):
            owner = self._aliases.get(folded)
            if (folded in self._entries or (owner is not None and owner != key)) and not overwrite:
                raise self.error(f"{self.kind} alias {alias!r} is already taken; choose another alias for "
                                 f"{name!r}")
        if old is not None and old.target is not None and value is not None and not summary:
            summary = old.summary
        self._entries[key] = _Entry(key, value, target, summary)
        self._aliases.update(dict.fromkeys(folded_aliases, key))

    @staticmethod
    def _fulfils(entry: _Entry[T], value: T | None) -> bool:
        """True when ``value`` is the object a lazy entry points to (its module registering itself), or the
        same class or function defined again (a module imported twice)."""
        where = _where(value)
        return value is not None and "<" not in where and where == (entry.target or _where(entry.value))

    def unregister(self, name: str) -> None:
        """Remove ``name`` and its aliases (for tests and plugins that replace an entry)."""
        key = self.canonical(name)
        del self._entries[key]
        for alias in [a for a, owner in self._aliases.items() if owner == key]:
            del self._aliases[alias]

    # --- lookup -------------------------------------------------------------------------------------
    def canonical(self, name: str) -> str:
        """The registered name behind ``name`` or an alias of it; the registry's error when unknown."""
        key = self._normalize(name)
        key = self._aliases.get(key, key)
        if key not in self._entries:
            raise self.error(f"unknown {self.kind} {name!r}; known: {', '.join(self) or 'none'}")
        return key

    def find(self, name: str) -> T | None:
        """The object registered as ``name`` (or an alias), or None; import errors are not swallowed."""
        key = self._normalize(name)
        entry = self._entries.get(self._aliases.get(key, key))
        return None if entry is None else self._resolve(entry)

    def __getitem__(self, name: str) -> T:
        """The object registered as ``name`` (or an alias), importing a lazy entry; error when unknown."""
        return self._resolve(self._entries[self.canonical(name)])

    def _resolve(self, entry: _Entry[T]) -> T:
        if entry.target is not None:
            module, _, attr = entry.target.partition(":")
            loaded = importlib.import_module(module)
            try:
                value = getattr(loaded, attr)
            except AttributeError:
                raise ConfigError(f"{self.kind} {entry.name!r}: module {module!r} has no attribute {attr!r} "
                                  f"(lazy target {entry.target!r})") from None
            entry.value, entry.target = value, None
        assert entry.value is not None  # registered directly or just resolved
        return entry.value

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = self._normalize(name)
        return self._aliases.get(key, key) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def names(self) -> list[str]:
        """Registered names (not aliases), in registration order."""
        return list(self._entries)

    def values(self) -> list[T]:
        """Every registered object, in registration order (imports the lazy entries)."""
        return [self._resolve(entry) for entry in list(self._entries.values())]

    def __len__(self) -> int:
        return len(self._entries)

    def aliases(self, name: str) -> list[str]:
        """The aliases of ``name``."""
        key = self.canonical(name)
        return sorted(a for a, owner in self._aliases.items() if owner == key)

    def summary(self, name: str) -> str:
        """The one-line description given at registration ("" when none)."""
        return self._entries[self.canonical(name)].summary

    def listing(self) -> list[str]:
        """``name — summary`` lines (aliases in brackets), in registration order, for ``visae info``."""
        lines = []
        for name, entry in self._entries.items():
            alias_text = f" [{', '.join(self.aliases(name))}]" if self.aliases(name) else ""
            lines.append(f"{name}{alias_text}" + (f" — {entry.summary}" if entry.summary else ""))
        return lines

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self)})"


def _where(value: Any) -> str:
    """``module:qualname`` of a class or function; ``<TypeName>`` for any other object."""
    module = getattr(value, "__module__", None)
    qualname = getattr(value, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str):
        return f"{module}:{qualname}"
    return f"<{type(value).__name__}>"
