"""Relaxation during a gate as a Pauli channel (numpy only).

Shared by the device profiles (:mod:`qfl.task.profiles`) and the conversion of real
calibrations (:mod:`qfl.task.calibrated`), which subtracts it from a reported gate error.
"""

from __future__ import annotations

import math

import numpy as np


def relaxation_probs(t1_us: float, t2_us: float, gate_ns: float) -> np.ndarray:
    """Pauli-twirled amplitude + phase damping over ``gate_ns`` (probabilities of I, Z, X, Y).

    Ghosh, Fowler & Geller, PRA 86, 062318 (2012):
    :math:`p_x = p_y = (1 - e^{-t/T_1})/4`, :math:`p_z = (1 - e^{-t/T_2})/2 - (1 - e^{-t/T_1})/4`.
    """
    t_us = gate_ns * 1e-3
    a = 1.0 - math.exp(-t_us / t1_us)
    d = 1.0 - math.exp(-t_us / t2_us)
    px = py = a / 4
    pz = max(0.0, d / 2 - a / 4)
    return np.array([1.0 - px - py - pz, pz, px, py])
