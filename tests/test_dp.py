"""Differential privacy: clipping bound, seeded noise, and epsilon from the accountant."""

from __future__ import annotations

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant
from flwr.app import Array, ArrayRecord, RecordDict

from transport.base import Envelope
from transport.dp import LocalDPTransport, PrivacyAccountant, clip_update, rdp_epsilon, validate_dp


@pytest.mark.parametrize("scale", [0.0, 1e-6, 0.3, 1.0, 50.0])
def test_clipped_update_never_exceeds_c(scale):
    rng = np.random.default_rng(0)
    for _ in range(50):
        update = scale * rng.normal(size=37)
        clipped = clip_update(update, 1.5)
        assert np.linalg.norm(clipped) <= 1.5 + 1e-12
        if np.linalg.norm(update) <= 1.5:
            np.testing.assert_array_equal(clipped, update)  # small updates pass unchanged


def _records(rng, scale):
    glob = {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=3)}
    local = {k: v + scale * rng.normal(size=v.shape) for k, v in glob.items()}
    as_rd = lambda d: RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in d.items()})})  # noqa: E731
    return as_rd(glob), as_rd(local), glob


def test_local_dp_clips_before_noise_and_is_seeded():
    rng = np.random.default_rng(1)
    request, reply, glob = _records(rng, scale=10.0)  # a large update, norm >> C
    env = Envelope(run_id=3, server_round=2, src="node-5", dst="server", direction="up")
    # (almost) no noise: what leaves is the global model + an update of norm C
    quiet = LocalDPTransport(clip=0.5, noise_multiplier=1e-12, seed=0).encode(reply, env, request)
    delta = np.concatenate([quiet["arrays"][k].numpy().ravel() - glob[k].ravel() for k in ("w", "b")])
    assert np.linalg.norm(delta) == pytest.approx(0.5, rel=1e-9)
    noisy = LocalDPTransport(clip=0.5, noise_multiplier=1.0, seed=0)
    a = noisy.encode(reply, env, request)["arrays"]["w"].numpy()
    b = noisy.encode(reply, env, request)["arrays"]["w"].numpy()
    c = noisy.encode(reply, Envelope(3, 3, "node-5", "server", "up"), request)["arrays"]["w"].numpy()
    np.testing.assert_array_equal(a, b)  # reproducible
    assert not np.allclose(a, c)  # fresh noise every round
    # the server's messages and incoming content are untouched
    assert noisy.encode(request, Envelope(3, 2, "server", "node-5", "down")) is request


def test_epsilon_equals_the_accountants():
    acc = PrivacyAccountant(noise_multiplier=1.3, sampling_rate=0.25, delta=1e-5)
    acc.step(7)
    ref = rdp_privacy_accountant.RdpAccountant()
    ref.compose(dp_event.PoissonSampledDpEvent(0.25, dp_event.GaussianDpEvent(1.3)), 7)
    assert acc.epsilon == pytest.approx(ref.get_epsilon(1e-5), rel=1e-12)


def test_subsampling_amplification_is_counted():
    full = rdp_epsilon(2.0, 1.0, 50, 1e-5)
    sampled = rdp_epsilon(2.0, 0.1, 50, 1e-5)
    assert full / sampled > 10  # the no-amplification bound overstates it tenfold here


@pytest.mark.parametrize(("clip", "sigma", "delta", "name"), [
    (0.0, 1.0, 1e-5, "dp-clip"), (1.0, float("nan"), 1e-5, "dp-noise-multiplier"), (1.0, 1.0, 5.0, "dp-delta"), (1.0, 1.0, 0.0, "dp-delta"),
])
def test_dp_parameters_are_validated(clip, sigma, delta, name):
    with pytest.raises(ValueError, match=name):
        validate_dp(clip, sigma, delta)
