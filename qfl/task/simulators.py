"""Which state-vector simulator runs the PQC, and how it differentiates.

Two PennyLane devices, two ways to get the gradient of a batch of ``B`` circuits on ``n``
qubits with ``G`` gates each:

- ``default.qubit`` with ``backprop``: one broadcast execution of the whole batch in torch,
  which keeps every intermediate state for the backward pass: time and memory
  :math:`O(B\\,G\\,2^n)`, little overhead per gate;
- ``lightning.qubit`` with ``adjoint``: one C++ execution per batch element, then the adjoint
  sweep (Jones & Gacon 2020), which recomputes states backwards instead of storing them:
  time :math:`O(B\\,G\\,2^n)` at a higher constant per circuit, memory :math:`O(2^n)`.

``device = "auto"`` (:func:`choose_simulator`) takes ``default.qubit`` below a crossover and
``lightning.qubit`` from it, crossovers measured by ``bench/client_training.py`` (one training
step, batch 32, 4 layers; docs/benchmarks.md):

- :data:`~qfl.common.config.LIGHTNING_FROM_QUBITS` (14) on an ideal device, where lightning
  becomes the faster (0.65x its speed at 13 qubits, 1.13x at 14, 3.9x at 16);
- :data:`~qfl.common.config.LIGHTNING_FROM_QUBITS_NOISY` (12) where the circuit runs with sampled
  noise gates (a device profile with gate or relaxation errors, or any mitigation). Their extra
  gates (routing SWAPs, a Pauli error per gate and sample, ZNE's 9x folding) multiply the states
  backprop stores: at 12 qubits ``default.qubit`` is still 2.6x faster per step but holds
  8.4 GiB per client against lightning's 0.6 GiB (four clients would not fit a 24 GiB machine),
  and at 14 qubits one client was killed for memory at 24 GiB. Here ``auto`` picks what fits.

The noise model is Pauli trajectories (unitary gates on a pure state, :mod:`qfl.task.noise`), and
PEC samples unitary Paulis too, so both devices run every noisy and mitigated circuit, with the
same draws from the same seed: ``auto`` never needs a mixed-state simulator.
"""

from __future__ import annotations

import math

import numpy as np

from qfl.task.qml import qml  # first: pennylane_lightning imports PennyLane, which qfl.task.qml imports lean

from pennylane_lightning.lightning_qubit import LightningQubit  # noqa: I001 (after qfl.task.qml, see above)

from qfl.common.config import LIGHTNING_FROM_QUBITS, LIGHTNING_FROM_QUBITS_NOISY
from qfl.task.profiles import DeviceProfile

AUTO = "auto"
DEFAULT_QUBIT, LIGHTNING_QUBIT = "default.qubit", "lightning.qubit"


class Float64LightningQubit(LightningQubit):
    """``lightning.qubit`` whose results reach torch in double precision.

    lightning returns each expectation value as a Python ``float``, and PennyLane 0.45's torch
    boundary turns results into tensors with ``torch.as_tensor``, which makes a Python float a
    ``float32`` tensor: every expectation value, and through the ``float32`` cotangent every
    gradient, would lose everything below ~1e-8. A 0-d ``float64`` array keeps its precision.
    """

    def simulate(self, circuit, state, **kwargs):
        return _as_float64(super().simulate(circuit, state, **kwargs))


def _as_float64(result):
    if isinstance(result, (tuple, list)):
        return type(result)(_as_float64(r) for r in result)
    return np.asarray(result, dtype=np.float64) if isinstance(result, float) else result


def runs_noise_gates(profile: DeviceProfile | None, mitigation: str) -> bool:
    """Whether the device runs more than the routed circuit: sampled Pauli errors (gate or
    relaxation noise, :func:`qfl.task.noise.pauli_trajectories`) or a mitigation's gates.
    Read-out error and shots act on the expectation values and cost no simulation."""
    if profile is None:
        return False
    gate_noise = profile.p1 > 0 or profile.p2 > 0 or not math.isinf(profile.t1_us) or not math.isinf(profile.t2_us)
    return gate_noise or mitigation != "none"


def choose_simulator(device: str, diff_method: str, n_qubits: int, noise_gates: bool = False) -> tuple[str, str]:
    """``(device, diff_method)`` to build: ``"auto"`` and ``"best"`` resolved.

    ``"auto"`` is ``default.qubit`` below the crossover (:data:`LIGHTNING_FROM_QUBITS`, or
    :data:`LIGHTNING_FROM_QUBITS_NOISY` with ``noise_gates``) and ``lightning.qubit`` from it,
    except with ``diff_method = "backprop"``, which only ``default.qubit`` has. ``"best"`` is
    ``backprop`` on ``default.qubit`` and ``adjoint`` on ``lightning.qubit``. Below the crossover
    ``auto`` is exactly the former default, ``default.qubit`` with the same ``diff_method``.
    Any other installed PennyLane device (a plugin's) is taken as named, ``"best"`` left to PennyLane.
    """
    if device == AUTO:
        crossover = LIGHTNING_FROM_QUBITS_NOISY if noise_gates else LIGHTNING_FROM_QUBITS
        device = LIGHTNING_QUBIT if n_qubits >= crossover and diff_method != "backprop" else DEFAULT_QUBIT
    if diff_method == "best" and device in (DEFAULT_QUBIT, LIGHTNING_QUBIT):
        diff_method = "adjoint" if device == LIGHTNING_QUBIT else "backprop"
    return device, diff_method  # another plugin's device: "best" is PennyLane's own choice


def make_device(name: str, n_qubits: int) -> qml.devices.Device:
    """The PennyLane device ``name`` on ``n_qubits`` wires (lightning in double precision)."""
    if name == LIGHTNING_QUBIT:
        return Float64LightningQubit(wires=n_qubits)
    return qml.device(name, wires=n_qubits)
