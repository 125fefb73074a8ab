"""The classical baseline: a small torch MLP with about the PQC's parameter count.

The paper's first open question is when quantum federated learning beats classical
federated learning; answering it needs the same federation, partitions and strategies
with a classical model beside the PQC (``model = "mlp"``). The MLP sees exactly what the
circuit sees: the ``n``-dimensional angle vector of a classical set, or the ``2**n`` real
amplitudes of a TFIM state,

.. math:: \\mathrm{logits} = W_2 \\tanh(W_1 x + b_1) + b_2,

with a hidden width ``H`` chosen so that its parameter count
:math:`H (d + C + 1) + C` is the closest to the PQC's :math:`3 L n + 2 C` (at least 1).
It runs noiselessly (no device profile, no ZNE) and reports zeros for the circuit metrics,
so its replies have the PQC's schema.
"""

from __future__ import annotations

import torch

from qfl.common.config import MITIGATIONS


def pqc_parameter_count(n_qubits: int, n_layers: int, n_classes: int) -> int:
    """Trainable parameters of the fixed-embedding PQC: weights ``(L, n, 3)``, scale, bias."""
    return 3 * n_layers * n_qubits + 2 * n_classes


def matched_hidden_width(n_inputs: int, n_classes: int, target: int) -> int:
    """The hidden width ``H >= 1`` whose MLP parameter count ``H (d + C + 1) + C`` is closest to ``target``."""
    per_unit = n_inputs + n_classes + 1
    return max(1, round((target - n_classes) / per_unit))


class MLPClassifier(torch.nn.Module):
    """``d -> H -> C`` tanh MLP (float64), the classical twin of :class:`qfl.task.model.PQCClassifier`.

    Parameters
    ----------
    n_inputs : int
        Input dimension ``d`` (``n_qubits`` angles, or ``2**n_qubits`` amplitudes).
    n_classes : int
        Number of classes ``C``.
    hidden : int
        Hidden width ``H`` (see :func:`matched_hidden_width`).
    seed : int
        Seed of the initialisation (the same global model everywhere).

    Examples
    --------
    >>> MLPClassifier(4, 3, hidden=5)(torch.rand(8, 4, dtype=torch.float64)).shape
    torch.Size([8, 3])
    """

    is_quantum = False

    def __init__(self, n_inputs: int, n_classes: int, hidden: int, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.n_classes = n_classes
        self.hidden = torch.nn.Linear(n_inputs, hidden, dtype=torch.float64)
        self.out = torch.nn.Linear(hidden, n_classes, dtype=torch.float64)
        with torch.no_grad():  # torch's default init, drawn from our generator
            for layer in (self.hidden, self.out):
                bound = 1.0 / layer.in_features ** 0.5
                layer.weight.uniform_(-bound, bound, generator=gen)
                layer.bias.uniform_(-bound, bound, generator=gen)
        # what the PQC exposes to the client's bookkeeping: no device, nothing to mitigate
        self.profile, self.zne, self.mitigation, self.is_noisy = None, False, MITIGATIONS[0], False

    def reseed_noise(self, seed: int) -> None:
        """Nothing to reseed: the MLP runs noiselessly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(B, C)``."""
        return self.out(torch.tanh(self.hidden(x)))
