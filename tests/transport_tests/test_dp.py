"""Differential privacy: clipping bound, noise on the update only, parameter checks (the
privacy guarantees themselves are in test_security.py)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, RecordDict

from qfl.common.records import clip_update
from transport.base import Envelope
from transport.dp import LocalDPTransport, validate_dp


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


def test_local_dp_clips_before_noise():
    rng = np.random.default_rng(1)
    request, reply, glob = _records(rng, scale=10.0)  # a large update, norm >> C
    env = Envelope(run_id=3, server_round=2, node_id=5, src="node-5", dst="server", direction="up")
    # (almost) no noise: what leaves is the global model + an update of norm C
    quiet = LocalDPTransport(clip=0.5, noise_multiplier=1e-12).encode(reply, env, request)
    delta = np.concatenate([quiet["arrays"][k].numpy().ravel() - glob[k].ravel() for k in ("w", "b")])
    assert np.linalg.norm(delta) == pytest.approx(0.5, rel=1e-9)
    # noise of std sigma * C around the clipped update
    noisy = LocalDPTransport(clip=0.5, noise_multiplier=2.0).encode(reply, env, request)
    noise = np.concatenate([noisy["arrays"][k].numpy().ravel() - quiet["arrays"][k].numpy().ravel() for k in ("w", "b")])
    assert 0.3 < noise.std() < 2.5
    # the server's messages and incoming content are untouched
    assert LocalDPTransport(0.5, 1.0).encode(request, Envelope(3, 2, 5, "server", "node-5", "down")) is request


@pytest.mark.parametrize(("clip", "sigma", "delta", "name"), [
    (0.0, 1.0, 1e-5, "dp-clip"), (1.0, float("nan"), 1e-5, "dp-noise-multiplier"), (1.0, 1.0, 5.0, "dp-delta"), (1.0, 1.0, 0.0, "dp-delta"),
])
def test_dp_parameters_are_validated(clip, sigma, delta, name):
    with pytest.raises(ValueError, match=name):
        validate_dp(clip, sigma, delta)
