"""A user strategy in the user's own module: FedAvg with a server step size.

Load it by name, without editing qfl:

    PYTHONPATH=docs/examples qfl launch --strategy server_step:ServerStepFedAvg \
        --set 'strategy-options="{ server-lr = 0.5 }"'
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import FedAvg


class ServerStepFedAvg(FedAvg):
    r"""FedAvg that moves the global model only part of the way to the average.

    .. math:: w^{t+1} = w^t + \eta\,(\bar w - w^t), \qquad
              \bar w = \sum_k \tfrac{n_k}{n} w_k

    :math:`\eta = 1` is FedAvg; :math:`\eta < 1` damps the step (useful when client
    updates are noisy).
    """

    def __init__(self, *, server_lr: float = 1.0, **kwargs) -> None:
        if not 0.0 < server_lr <= 1.0:
            raise ValueError(f"server_lr must be in (0, 1], got {server_lr!r}")
        super().__init__(**kwargs)
        self.server_lr = server_lr
        self._global: ArrayRecord | None = None

    def configure_train(self, server_round, arrays, config, grid):
        self._global = arrays  # remember w^t
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        average, metrics = super().aggregate_train(server_round, replies)
        if average is None or self._global is None:
            return average, metrics
        stepped = {
            name: Array(old.numpy() + self.server_lr * (average[name].numpy() - old.numpy()))
            for name, old in self._global.items()
        }
        return ArrayRecord(stepped), metrics
