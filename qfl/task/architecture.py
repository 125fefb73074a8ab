"""A client's circuit: which member of the PQC family it runs (no PennyLane here).

:class:`CircuitSpec` names one circuit of the family :class:`qfl.task.model.PQCClassifier`
builds: its depth ``L``, the entangler after each layer's rotations, the rotation set, and
whether the data are re-uploaded before every layer or encoded once. Every member keeps the
parameter shapes of the built-in circuit (``weights (L, n, 3)``): a rotation set that uses
fewer angles leaves the others untouched, so that clients on different circuits still share
the first layers of one global model (:mod:`strategies.nested_fedavg`).

:class:`SearchSpace` is what a per-client search (:mod:`qfl.task.qas`) may choose from, read
from the ``qas-space`` run-config key (a TOML inline table). This module imports only the
standard library, so that a run's configuration can be checked without torch or PennyLane.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields

ENTANGLERS = ("ring", "line", "none")  # CNOT ring (the built-in circuit), CNOT chain, no entangler
ROTATIONS = ("rot", "ryrz", "ry")  # Rot(phi, theta, omega) (built in), RY(theta) RZ(omega), RY(theta)
ARCHITECTURES = ("fixed", "by-device", "search")  # how each client picks its circuit (run config)


@dataclass(frozen=True)
class CircuitSpec:
    """One circuit of the family.

    Attributes
    ----------
    layers : int
        Depth ``L``: (re-uploading +) trainable layers.
    entangler : str
        One of :data:`ENTANGLERS`.
    rotations : str
        One of :data:`ROTATIONS`.
    reupload : bool
        Angle data: ``RY(x)`` before every layer (True, the built-in circuit) or before the
        first only. Ignored for state data (prepared once either way).

    Examples
    --------
    >>> CircuitSpec(3).label()
    'L3-ring-rot-reupload'
    >>> CircuitSpec.from_label('L2-line-ry-once')
    CircuitSpec(layers=2, entangler='line', rotations='ry', reupload=False)
    """

    layers: int
    entangler: str = "ring"
    rotations: str = "rot"
    reupload: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.layers, bool) or not isinstance(self.layers, int) or self.layers < 1:
            raise ValueError(f"layers must be an integer >= 1, got {self.layers!r}")
        if self.entangler not in ENTANGLERS:
            raise ValueError(f"entangler must be one of {', '.join(ENTANGLERS)}, got {self.entangler!r}")
        if self.rotations not in ROTATIONS:
            raise ValueError(f"rotations must be one of {', '.join(ROTATIONS)}, got {self.rotations!r}")
        if not isinstance(self.reupload, bool):
            raise ValueError(f"reupload must be true or false, got {self.reupload!r}")

    def label(self) -> str:
        """``L<layers>-<entangler>-<rotations>-<reupload|once>``: the circuit in one word."""
        return f"L{self.layers}-{self.entangler}-{self.rotations}-{'reupload' if self.reupload else 'once'}"

    @classmethod
    def from_label(cls, label: str) -> CircuitSpec:
        """The inverse of :meth:`label`."""
        depth, entangler, rotations, upload = label.split("-")
        return cls(int(depth.removeprefix("L")), entangler, rotations, upload == "reupload")

    def with_layers(self, layers: int) -> CircuitSpec:
        """The same circuit at another depth (the nested family's member)."""
        return CircuitSpec(layers, self.entangler, self.rotations, self.reupload)


@dataclass(frozen=True)
class SearchSpace:
    """What a client's circuit search may choose from.

    Attributes
    ----------
    max_layers : int
        Depths ``1..max_layers`` (the run's ``n-layers``: the global model's depth).
    min_layers : int
    entanglers, rotations : tuple of str
    reuploads : tuple of bool
    max_depth : int
        The most layers of gates (depth) a circuit may have once routed to the device's
        coupling map; 0: no limit. A circuit over it is never picked.
    fidelity_weight : float
        :math:`\\lambda` of the objective :math:`J = L_{val} - \\lambda \\ln \\hat F`
        (:func:`qfl.task.qas.objective`).
    """

    max_layers: int
    min_layers: int = 1
    entanglers: tuple[str, ...] = ENTANGLERS
    rotations: tuple[str, ...] = ROTATIONS
    reuploads: tuple[bool, ...] = (True, False)
    max_depth: int = 0
    fidelity_weight: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_layers <= self.max_layers:
            raise ValueError(f"layers must satisfy 1 <= min-layers <= max-layers, got {self.min_layers}..{self.max_layers}")
        for name, allowed, chosen in (("entanglers", ENTANGLERS, self.entanglers), ("rotations", ROTATIONS, self.rotations),
                                      ("reuploads", (True, False), self.reuploads)):
            if not chosen or any(c not in allowed for c in chosen) or len(set(chosen)) != len(chosen):
                raise ValueError(f"{name} must be distinct values of {allowed}, got {chosen!r}")
        if isinstance(self.max_depth, bool) or not isinstance(self.max_depth, int) or self.max_depth < 0:
            raise ValueError(f"max-depth must be an integer >= 0, got {self.max_depth!r}")
        if isinstance(self.fidelity_weight, bool) or not 0 <= self.fidelity_weight < 1e6:
            raise ValueError(f"fidelity-weight must be a finite number >= 0, got {self.fidelity_weight!r}")

    @property
    def size(self) -> int:
        """How many circuits the space holds."""
        return (self.max_layers - self.min_layers + 1) * len(self.entanglers) * len(self.rotations) * len(self.reuploads)

    def as_dict(self) -> dict[str, object]:
        """Plain values (for a cache key)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def parse_space(text: str, max_layers: int) -> SearchSpace:
    """The ``qas-space`` run-config value: a TOML inline table with any of ``min-layers``,
    ``entanglers``, ``rotations``, ``reuploads``, ``max-depth``, ``fidelity-weight``
    (``{}``: the whole family up to ``max_layers``).

    >>> parse_space('{ entanglers = ["ring"], max-depth = 40 }', 4).size
    24

    Raises
    ------
    ValueError
        Not a table, an unknown key, or a value out of range (naming it).
    """
    try:
        table = tomllib.loads(f"space = {text.strip() or '{}'}")["space"]
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"not a TOML inline table like '{{ entanglers = [\"ring\"] }}': {err}") from err
    if not isinstance(table, dict):
        raise ValueError("must be a TOML inline table")
    known = {"min-layers", "entanglers", "rotations", "reuploads", "max-depth", "fidelity-weight"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; choose from {sorted(known)}")
    values = {k.replace("-", "_"): tuple(v) if isinstance(v, list) else v for k, v in table.items()}
    return SearchSpace(max_layers=max_layers, **values)
