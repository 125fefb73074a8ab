"""``"name:field=value,..."``: a named preset with some fields overridden.

Device profiles (``qfl.task.noise``) and quantum-network paths (``transport.qcn``) are both
chosen this way; :func:`from_spec` is their one parser.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


def from_spec(spec: str, presets: Mapping[str, T], what: str, fixed: tuple[str, ...] = ()) -> tuple[T, bool]:
    """``(preset with the overrides, whether anything was overridden)``.

    Parameters
    ----------
    spec : str
        ``"name"`` or ``"name:field=value,field=value"``; dashes in field names are underscores.
    presets : Mapping[str, dataclass]
        The named presets (frozen dataclasses).
    what : str
        What a preset is, for messages (``"device profile"``).
    fixed : tuple[str, ...]
        Fields an override may not change.

    Raises
    ------
    ValueError
        Unknown name or field, a value that is not a number, or one the dataclass refuses.
    """
    name, _, overrides = spec.strip().partition(":")
    if name not in presets:
        raise ValueError(f"unknown {what} {name!r} (choose from {', '.join(presets)})")
    preset = presets[name]
    if not overrides:
        return preset, False
    types = {f.name: type(getattr(preset, f.name)) for f in dataclasses.fields(preset) if f.name not in fixed}  # type: ignore[arg-type]
    changes: dict[str, object] = {}
    for item in overrides.split(","):
        key, sep, raw = item.partition("=")
        key, raw = key.strip().replace("-", "_"), raw.strip()
        if not sep or key not in types:
            raise ValueError(f"{what} {spec!r}: bad override {item!r} (fields: {', '.join(types)})")
        try:
            changes[key] = raw if types[key] is str else int(float(raw)) if types[key] is int else float(raw)
        except ValueError as err:
            raise ValueError(f"{what} {spec!r}: {key}={raw!r} is not a number") from err
    try:
        return dataclasses.replace(preset, **changes), True  # type: ignore[type-var]
    except ValueError as err:
        raise ValueError(f"{what} {spec!r}: {err}") from err
