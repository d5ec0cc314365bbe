"""Lazy package exports: a name is imported from its module on first use (PEP 562).

A package `__init__` lists `{name: module}` and sets `__getattr__ = exports(...)`; its
`if TYPE_CHECKING:` imports tell the type checker the same names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def exports(
    package: str, names: Mapping[str, str], namespace: dict[str, Any]
) -> Callable[[str], Any]:
    """A module `__getattr__` that imports `names[name]` once and keeps it in `namespace`."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
