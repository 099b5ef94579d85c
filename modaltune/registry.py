"""Name -> implementation tables, one per extension point (slide encoders, objectives, metrics,
study factors, samplers, schedulers, modalities, text encoders, feature formats, methods).

Why: a spec or config names its choices as strings; one table per extension point means a new
choice is one registered class or function in one place, validators read their choices from the
same table (so a list of names cannot drift from what exists), and an unknown name is an input
error that lists the choices — never a fall-through default. The pattern is eva's
``core/utils/registry.py`` and Ray Tune's name-to-class table in ``schedulers/__init__.py``.

An entry with options owns them: its class declares ``Settings``, an ``EntrySettings`` subclass
(the keys a config gives it, their defaults and bounds), and the section that chooses the entry
validates them with ``Registry.settings``; so a new entry with options is still one file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from modaltune.errors import InputError, describe_validation_error

T = TypeVar("T")


class UnknownChoiceError(InputError):
    """A name that no entry of a registry has."""


class EntrySettings(BaseModel):
    """An entry's own settings; unknown keys are refused, values are fixed once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Registry(Generic[T]):
    """Entries by name, in registration order (the order choices are listed in messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind  # what an entry is, for messages: "objective", "sampler", ...
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator that adds its class or function under ``name`` and returns it unchanged."""

        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    @contextmanager
    def registered(self, name: str, entry: T) -> Iterator[T]:
        """``entry`` under ``name`` for the length of a ``with`` block (a test's or a notebook's
        own choice that must not outlive it)."""
        self.register(name)(entry)
        try:
            yield entry
        finally:
            del self._entries[name]

    def __getitem__(self, name: str) -> T:
        return self._entries[self.check(name)]

    def check(self, name: str) -> str:
        """``name`` if it is registered, else an input error listing the choices (a ``ValueError``,
        so a pydantic validator may raise it as is)."""
        if name not in self._entries:
            raise UnknownChoiceError(f"unknown {self.kind} {name!r}; choose from {self.names()}")
        return name

    def settings(self, name: str, raw: Mapping[str, Any] | None = None, written: str | None = None) -> EntrySettings:
        """Entry ``name``'s own ``Settings`` from ``raw``, its defaults filled in (an entry that
        declares none takes no keys); a bad or unknown key is an input error naming the entry
        (as the config ``written`` it, if given), the key and the entry's settings."""
        settings_type: type[EntrySettings] = getattr(self[name], "Settings", EntrySettings)
        try:
            return settings_type.model_validate(dict(raw or {}))
        except ValidationError as exc:
            known = sorted(settings_type.model_fields) or "none"
            raise InputError(f"{self.kind} {written or name!r}: {describe_validation_error(exc)} (its settings: {known})") from exc

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._entries.items())

    def values(self) -> Iterator[T]:
        return iter(self._entries.values())

    def __iter__(self) -> Iterator[str]:
        """The names, as a dict iterates its keys."""
        return iter(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
