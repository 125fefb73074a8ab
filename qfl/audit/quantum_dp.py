r"""What quantum differential privacy gives the clients' measurements, from a device profile.

The theorem (Zhou & Ying, "Differential Privacy in Quantum Computation", IEEE CSF 2017,
Theorem 3; the same bound is the robustness certificate of Du, Hsieh, Liu, Tao & Liu,
"Quantum noise protects quantum classifiers against adversaries", Phys. Rev. Research 3,
023153 (2021), and their "quantum differentially private" classifier): the depolarizing
channel :math:`\mathcal E(\rho) = (1 - q)\rho + q\, I/d` followed by any measurement
:math:`\{M_o\}` is :math:`\varepsilon`-DP for inputs at trace distance at most :math:`\tau`,

.. math:: \varepsilon = \ln\!\left(1 + \frac{(1 - q)\, d\, \tau}{q}\right),

because :math:`\mathrm{tr}(M_o\mathcal E(\rho)) \ge q\,\mathrm{tr}(M_o)/d` and
:math:`\mathrm{tr}(M_o(\mathcal E(\rho) - \mathcal E(\sigma))) \le (1-q)\,\tau\,\lambda_{\max}(M_o)`.

From the project's noise model to a :math:`q` (derived here; each step is elementary):

1. A 1-qubit Pauli channel :math:`\sum_P p_P P\rho P` (the profile's depolarizing ``p1`` with
   its Pauli-twirled relaxation, :meth:`~qfl.task.profiles.DeviceProfile.pauli_probs_1q`) is
   :math:`q_1 \Delta + (1 - q_1)\mathcal N'` with :math:`\Delta(\rho) = I/2` and
   :math:`q_1 = 4 \min_P p_P` (since :math:`\Delta(\rho) = \frac14\sum_P P\rho P`). For
   depolarizing ``p1`` alone (``p1/3`` per Pauli), :math:`q_1 = 4 p_1/3`.
2. A layer of 1-qubit gates on all :math:`n` wires (each data-upload :math:`R_Y` layer and each
   ``Rot`` layer of the circuit, :mod:`qfl.task.model`) applies the product of :math:`n` such
   channels, whose all-:math:`\Delta` term is :math:`q_1^n` times the full depolarization
   :math:`\rho \mapsto I/2^n`.
3. Every gate and every other noise channel of the model is unital (unitaries, Pauli channels),
   so once the register is fully depolarized it stays :math:`I/2^n` whatever comes after, the
   data-dependent gates included. The output state is therefore
   :math:`q\, I/2^n + (1 - q)\,\sigma_x` with :math:`q = 1 - (1 - q_1^n)^{\ell}` for
   :math:`\ell` such layers, and the 2-qubit gates' noise (left out) only adds to it.
4. The clients measure :math:`C` class qubits (:math:`2^C` outcomes). The fully depolarized part
   gives each outcome :math:`2^{-C}`, and read-out error flips each bit independently: a binary
   channel with :math:`p(1|0) = r - a/2`, :math:`p(0|1) = r + a/2` (``readout_error`` :math:`r`,
   ``readout_asymmetry`` :math:`a`) is :math:`w\,U + (1 - w)R'` with :math:`U` uniform and
   :math:`w = 2\min(p(1|0), p(0|1)) = 2r - |a|`, so the read-out adds a uniform part of weight
   :math:`w^C`. With :math:`Q = 1 - (1 - q)(1 - w^C)`, one shot is :math:`\varepsilon`-DP with

   .. math:: \varepsilon_{\mathrm{shot}} = \ln\!\left(1 + \frac{(1 - Q)\, 2^C \tau}{Q}\right).

5. Training touches an example through every shot of every circuit run on it. On hardware,
   with ``shots`` :math:`S` per expectation value and parameter-shift gradients (two runs per
   trainable circuit parameter, :math:`P = 3nL`, plus the forward run), that is
   :math:`k = R\,E\,(2P + 1)\,S` shots for :math:`R` rounds of :math:`E` epochs, and basic
   composition gives :math:`k\,\varepsilon_{\mathrm{shot}}` for neighbours that replace one
   example (advanced composition does not help at :math:`\varepsilon_{\mathrm{shot}} \ge 1`).
   With ``shots = 0`` (exact expectation values, every named profile) the release is the
   outcome distribution itself, infinitely many shots: :math:`\varepsilon = \infty`.

Two limits, stated where the figures are used (``docs/privacy.md``): the guarantee is for the
noisy channel measured on hardware. The simulator here samples one Pauli trajectory per input
and returns that trajectory's exact expectation, a pure-state computation that carries no
such guarantee at all; and :math:`\tau = 1` (any two inputs) is the neighbour relation a
membership audit needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qfl.task.profiles import DeviceProfile


def depolarizing_epsilon(q: float, dim: int, tau: float = 1.0) -> float:
    r"""Zhou & Ying's :math:`\varepsilon = \ln(1 + (1 - q)\, d\, \tau / q)` for the channel
    :math:`(1 - q)\rho + q I/d` measured with ``dim`` :math:`= d` outcomes' worth of dimension.

    Examples
    --------
    >>> round(depolarizing_epsilon(0.5, 2), 6)  # ln(1 + 0.5 * 2 / 0.5) = ln 3
    1.098612
    """
    for name, v in (("q", q), ("tau", tau)):
        if isinstance(v, bool) or not 0 <= v <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {v!r}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if q == 0:
        return math.inf if tau > 0 else 0.0
    return math.log1p((1.0 - q) * dim * tau / q)


def single_qubit_depolarized_weight(profile: DeviceProfile) -> float:
    """:math:`q_1 = 4 \\min_P p_P` of the profile's 1-qubit gate channel (step 1)."""
    return float(4.0 * np.min(profile.pauli_probs_1q()))


def readout_uniform_weight(profile: DeviceProfile) -> float:
    """:math:`w = 2 r - |a|`: the uniform part of one bit's read-out channel (step 4)."""
    return max(0.0, 2.0 * profile.readout_error - abs(profile.readout_asymmetry))


def one_qubit_layers(n_layers: int, kind: str = "angles", embedding: str = "fixed") -> int:
    """Layers of 1-qubit gates on every wire in the circuit of :mod:`qfl.task.model`: an
    :math:`R_Y` upload and a ``Rot`` layer per layer for angle data; a ``Rot`` layer per layer
    (and the trainable embedding's) for states."""
    if kind == "angles":
        return 2 * n_layers
    if kind == "states":
        return n_layers + (1 if embedding == "trainable" else 0)
    raise ValueError(f"kind must be 'angles' or 'states', got {kind!r}")


@dataclass(frozen=True)
class QuantumDP:
    """The quantum-DP figures of one device profile and circuit.

    Attributes
    ----------
    q_gates : float
        Weight of the full depolarization the 1-qubit gates' noise gives (step 3).
    q_total : float
        With the read-out's uniform part (step 4).
    epsilon_shot : float
        One shot's epsilon (``tau = 1``).
    shots_per_example : float
        Shots that touch one example in training (``inf`` with exact expectations).
    epsilon_training : float
        ``shots_per_example * epsilon_shot`` (basic composition; ``inf`` without shots).
    """

    profile: str
    q_gates: float
    q_total: float
    epsilon_shot: float
    shots_per_example: float
    epsilon_training: float


def quantum_dp(profile: DeviceProfile, n_qubits: int, n_layers: int, n_classes: int, rounds: int, epochs: int,
               kind: str = "angles", embedding: str = "fixed", tau: float = 1.0) -> QuantumDP:
    """The quantum-DP epsilon of the clients' measurements on ``profile`` (module doc, steps 1-5).

    Parameters
    ----------
    profile : DeviceProfile
    n_qubits, n_layers, n_classes : int
        The circuit (:class:`~qfl.task.model.PQCClassifier`).
    rounds, epochs : int
        Federated rounds in which the example's client trains, and its local epochs.
    kind, embedding : str
        The data kind and embedding of the circuit.
    tau : float
        Trace distance of neighbouring inputs' states (1: any two).
    """
    if n_classes > n_qubits:
        raise ValueError(f"{n_classes} classes need at least as many qubits, got {n_qubits}")
    q1 = single_qubit_depolarized_weight(profile)
    layers = one_qubit_layers(n_layers, kind, embedding)
    # 1 - (1 - q1^n)^layers and 1 - (1 - q)(1 - w), without rounding q1^n ~ 1e-19 away
    q_gates = -math.expm1(layers * math.log1p(-(q1 ** n_qubits))) if q1 < 1 else 1.0
    w = readout_uniform_weight(profile) ** n_classes
    q_total = -math.expm1(math.log1p(-q_gates) + math.log1p(-w)) if q_gates < 1 and w < 1 else 1.0
    eps_shot = depolarizing_epsilon(q_total, 2 ** n_classes, tau)
    params = 3 * n_qubits * n_layers  # Rot angles: the parameter-shift gradient runs 2 circuits each
    shots = math.inf if profile.shots == 0 else float(rounds * epochs * (2 * params + 1) * profile.shots)
    eps_train = math.inf if math.isinf(shots) or math.isinf(eps_shot) else shots * eps_shot
    return QuantumDP(profile.name, q_gates, q_total, eps_shot, shots, eps_train)
