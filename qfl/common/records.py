"""A Flower ``ArrayRecord`` as one flat vector and back: the shape every update transform
(clipping, noising, teleporting, averaging) works in."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord


def flatten(arrays: ArrayRecord, names: list[str] | None = None) -> np.ndarray:
    """The parameters ``names`` (default: all, in the record's order) as one float64 vector."""
    names = list(arrays.keys()) if names is None else names
    return np.concatenate([arrays[n].numpy().astype(np.float64, copy=False).ravel() for n in names])


def unflatten(vector: np.ndarray, like: ArrayRecord, names: list[str] | None = None) -> ArrayRecord:
    """``vector`` cut back into ``like``'s parameters (``names``), with their shapes and dtypes."""
    names = list(like.keys()) if names is None else names
    out: dict[str, Array] = {}
    offset = 0
    for n in names:
        template = like[n].numpy()
        out[n] = Array(np.asarray(vector[offset : offset + template.size]).reshape(template.shape).astype(template.dtype))
        offset += template.size
    return ArrayRecord(out)


def clip_update(update: np.ndarray, clip: float) -> np.ndarray:
    """Scale ``update`` to L2 norm at most ``clip``; a zero update stays zero."""
    norm = float(np.linalg.norm(update))
    if norm <= clip:  # includes norm == 0 (Flower's helper divides by it)
        return update
    return update * (clip / norm)
