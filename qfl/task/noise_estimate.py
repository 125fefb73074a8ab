r"""What a client measures of its own device's noise, beside its update (no server, no mocks).

Three numbers travel in a training reply (names in :mod:`qfl.common.contract`):

- ``update-noise-var`` (:func:`update_noise_variance`): the per-coordinate variance of the
  update :math:`\Delta` (new minus received parameters) due to the device, shots and noise
  trajectories (and PEC's sampled circuits),

  .. math:: v = \frac{1}{d}\, \mathbb{E}\big\lVert \Delta - \mathbb{E}_{\mathrm{device}}[\Delta] \big\rVert^2 ,

  estimated from :math:`R` replicas of the same local training (same data order, same start,
  independent device draws) run together on the broadcast axis
  (:func:`qfl.task.train.train_local` with ``noise_replicas = R``): the unbiased sample
  variance over the replicas, averaged over the :math:`d` coordinates. Replica 0 is the update
  the client sends, so measuring does not change what is measured. Cost: each training step
  evaluates :math:`R B` circuits in one broadcast execution instead of :math:`B`
  (``bench/noisy_training.py``); 0 and no cost on a noiseless device, where the update is
  deterministic.
- ``noise-contraction`` (:func:`noise_contraction`): the factor :math:`c` by which the
  device, after the client's own mitigation, shrinks the circuit's expectation values, fitted
  through the origin on calibration inputs (the client's own, up to :data:`CALIBRATION_INPUTS`):

  .. math:: c = \frac{\sum_{k,c} \bar y_{kc}\, y^{\mathrm{ideal}}_{kc}}{\sum_{k,c} (y^{\mathrm{ideal}}_{kc})^2},

  :math:`\bar y` the mean of :data:`CALIBRATION_REPEATS` device evaluations (independent
  draws). The noise is additive with zero mean, so the numerator is unbiased and :math:`c`
  is too, before it is clipped to :math:`(0, 1]`. A biased read-out's offset
  :math:`p(0|1) - p(1|0)` (calibrated, like the rest) is subtracted from :math:`\bar y` first:
  it shifts values, it does not contract them. The device's calibration is its profile: the
  noiseless values are computed classically, which a simulator can do; on hardware the
  same fit runs on near-Clifford circuits (Czarnik et al., Quantum 5, 592 (2021)). Cost: one
  no-gradient broadcast execution of ``CALIBRATION_INPUTS * CALIBRATION_REPEATS`` circuits on
  the device and one of ``CALIBRATION_INPUTS`` noiseless ones; 1.0 and no cost when noiseless.
  With PEC, :math:`c = 1` without a fit: its quasi-probabilities invert the calibrated channels
  exactly (:mod:`qfl.task.pec`; ``tests/task_tests/test_pec.py`` checks the estimate is
  unbiased), so only a calibration error could leave a contraction, and a simulated device
  has none; a fit would measure PEC's own sampling noise, :math:`\gamma^2` times a noisy
  run's (on ``noisy-nisq`` :math:`\gamma^2 \approx 3500`: the fit's error exceeds 1).
- ``pec-gamma2``: :meth:`qfl.task.model.PQCClassifier.pec_gamma2`, analytic, one tape built.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from qfl.task.model import PEC, PQCClassifier

CALIBRATION_INPUTS = 32  # inputs of the contraction fit (the first of the client's own)
CALIBRATION_REPEATS = 8  # device evaluations of each, averaged
MIN_CONTRACTION = 1e-3  # the floor of the reported c: the contract says c > 0


def update_noise_variance(start: Mapping[str, torch.Tensor], replicas: Mapping[str, torch.Tensor]) -> float:
    r"""The mean over coordinates of the unbiased variance over replicas of the update.

    Parameters
    ----------
    start : mapping of name to tensor
        The parameters training started from (shape of each parameter).
    replicas : mapping of name to tensor
        The trained parameters of ``R >= 2`` replicas, each with a leading axis ``R``.

    Returns
    -------
    float
        :math:`\frac{1}{d} \sum_j \frac{1}{R-1} \sum_r (\Delta_{rj} - \bar\Delta_j)^2`.
    """
    deltas = torch.cat([(replicas[name].detach() - start[name]).reshape(replicas[name].shape[0], -1) for name in start],
                       dim=1)  # (R, d)
    if deltas.shape[0] < 2:
        raise ValueError(f"update_noise_variance needs at least 2 replicas, got {deltas.shape[0]}")
    return float(deltas.var(dim=0, unbiased=True).mean())


@torch.no_grad()
def noise_contraction(model: PQCClassifier, x: torch.Tensor, inputs: int = CALIBRATION_INPUTS,
                      repeats: int = CALIBRATION_REPEATS) -> float:
    r"""The contraction :math:`c \in (0, 1]` of ``model``'s expectation values on its device after
    its mitigation (module doc), on the first ``inputs`` rows of ``x``; 1.0 on a noiseless device.

    Draws from the model's noise generators (seeded per round by the caller).
    """
    if not getattr(model, "is_noisy", False) or model.mitigation == PEC:
        return 1.0
    calib = torch.as_tensor(x[:inputs])
    ideal = model.ideal_expvals(calib)  # (K, C)
    repeated = calib.repeat(repeats, *([1] * (calib.dim() - 1)))
    noisy = model.expvals(repeated).reshape(repeats, *ideal.shape).mean(dim=0)
    # a biased read-out adds p(0|1) - p(1|0) to every value, a calibrated offset (the profile), not a
    # contraction: taken off before the fit, or it would leak in as offset * sum(ideal) / sum(ideal^2)
    noisy = noisy - model.profile.readout_asymmetry
    norm = float((ideal**2).sum())
    if norm == 0.0:  # every noiseless value is 0: nothing to contract
        return 1.0
    return float(min(1.0, max(MIN_CONTRACTION, float((noisy * ideal).sum()) / norm)))
