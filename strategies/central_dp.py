"""Central differential privacy as a strategy wrapper, in Flower's idiom.

Flower's ``DifferentialPrivacyServerSideFixedClipping`` wraps a strategy: the server clips
each update to :math:`C`, averages, and adds Gaussian noise. :class:`CentralDPFixedClipping`
extends it so that what is added is what the accountant
(:class:`transport.dp.CentralDPLedger`) counts; ``dp-mode = "central"`` wraps the run's
strategy in it (:func:`server.chain.server_strategy`).
"""

from __future__ import annotations

import copy
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping
from flwr.supercore import log

from qfl.common.contract import ARRAYS, NUM_EXAMPLES
from qfl.common.records import clip_update, flatten, unflatten


class CentralDPFixedClipping(DifferentialPrivacyServerSideFixedClipping):
    """Flower's central DP with server-side fixed clipping, made to match its accounting.

    Per round, unlike the wrapper it extends:

    - the denominator is the number :math:`m` of nodes the round sampled, fixed before any
      reply arrives: the :math:`m'` sound replies are averaged and the average update scaled
      by :math:`m'/m` (a failed or refused reply adds zero), and the noise std is
      :math:`\\sigma C / m`. The average then moves by at most :math:`2C/m` when one client's
      data is replaced, whatever happens to the other replies, which is the sensitivity the
      ledger accounts; a data-dependent :math:`m'` in the denominator would not give that;
    - every clipped update weighs the same (``num-examples`` is set to 1 before the inner
      strategy aggregates): a weighted average would let one client move it by more than
      :math:`2C/m'`, the sensitivity epsilon is computed for;
    - a zero update is a no-op when clipped (Flower's helper divides by its norm);
    - the noise comes from OS entropy: noise seeded from the run config could be
      regenerated, and subtracted, by anyone who knows it;
    - :attr:`last_sample` keeps ``(available, sampled)`` of the round, for the ledger.

    The epsilon holds for a uniform average (FedAvg); a strategy that reweights or trims
    (noise-isolating, FedMedian) changes the sensitivity, and a warning says so.
    """

    def __init__(self, strategy, noise_multiplier: float, clipping_norm: float) -> None:  # noqa: ANN001
        super().__init__(strategy, noise_multiplier, clipping_norm, num_sampled_clients=1)
        self.last_sample: tuple[int, int] | None = None
        self._rng = np.random.default_rng()
        from flwr.serverapp.strategy import FedAvg

        if type(strategy).aggregate_train is not FedAvg.aggregate_train:
            log(WARNING, "central DP: %s does not average uniformly; the epsilon reported assumes it does",
                type(strategy).__name__)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config, grid):  # noqa: ANN001
        available = len(list(grid.get_node_ids()))
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.last_sample = (max(available, len(messages)), len(messages)) if messages else None
        return messages

    def aggregate_train(self, server_round: int, replies):  # noqa: ANN001
        weight_key, arrays_key = NUM_EXAMPLES, ARRAYS  # what our ClientApp sends
        sound = []
        for reply in replies:
            if not reply.has_error():
                content = RecordDict(dict(reply.content.items()))
                record = content.array_records[arrays_key]
                names = list(record.keys())
                start = flatten(self.current_arrays, names)
                clipped = clip_update(flatten(record, names) - start, self.clipping_norm)
                content[arrays_key] = unflatten(start + clipped, self.current_arrays, names)
                for key, metrics in reply.content.metric_records.items():
                    content[key] = MetricRecord({**dict(metrics), weight_key: 1.0})
                reply = copy.copy(reply)
                reply.content = content
            sound.append(reply)
        arrays, metrics = self.strategy.aggregate_train(server_round, sound)
        averaged = sum(1 for r in sound if not r.has_error())
        sampled = self.last_sample[1] if self.last_sample is not None else len(sound)
        if arrays is not None and averaged:
            sampled = max(sampled, averaged)
            std = self.noise_multiplier * self.clipping_norm / sampled
            names = list(arrays.keys())
            start = flatten(self.current_arrays, names)
            summed = start + (flatten(arrays, names) - start) * (averaged / sampled)  # the sum over m, zeros included
            noisy = summed + self._rng.normal(0.0, std, summed.shape)
            arrays = unflatten(noisy, arrays, names)
            log(INFO, "central DP: %d of %d sampled clipped update(s) summed, / %d, noise std %.4g",
                averaged, sampled, sampled, std)
        return arrays, metrics
