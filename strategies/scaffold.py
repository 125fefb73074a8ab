"""SCAFFOLD: control variates that correct client drift (Karimireddy et al., ICML 2020).

Clients on non-IID data drift toward their own optima during local steps, and averaging
their updates does not undo it. SCAFFOLD keeps a server control variate :math:`c` and one
per client :math:`c_i` (on the node, in its Flower state); each local gradient step uses
:math:`g + c - c_i`, an estimate of the drift removed.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from qfl.common.contract import CONTROL, CONTROL_DELTA


class Scaffold(FedAvg):
    r"""SCAFFOLD with option I control variates, as a FedAvg variant.

    Each round the message carries the global parameters :math:`x` and the server's control
    variate :math:`c` (ArrayRecord ``control``). Client :math:`i` sets
    :math:`c_i^+ = \nabla f_i(x)` (its full local gradient at :math:`x`), trains with every
    gradient corrected by :math:`c - c_i`, and replies with its parameters :math:`y_i` and
    :math:`\Delta c_i = c_i^+ - c_i` (ArrayRecord ``control-delta``). Over the :math:`|S|`
    replies of a round, out of :math:`N` available nodes:

    .. math::

        x \leftarrow x + \eta_g \frac{1}{|S|}\sum_{i\in S} (y_i - x), \qquad
        c \leftarrow c + \frac{|S|}{N} \frac{1}{|S|}\sum_{i\in S} \Delta c_i .

    The averages are uniform, as in the paper. Local steps are Adam steps here (the paper
    analyses SGD). With :math:`c = c_i = 0` and :math:`\eta_g = 1` one round is FedAvg with
    uniform weights.

    Parameters
    ----------
    server_learning_rate : float (default: 1.0)
        :math:`\eta_g`.
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.
    """

    #: ArrayRecords a reply carries besides the parameters (the server's guard accepts them)
    reply_arrays = (CONTROL_DELTA,)

    def __init__(self, *, server_learning_rate: float = 1.0, **kwargs) -> None:
        if isinstance(server_learning_rate, bool) or not 0 < server_learning_rate <= 10:
            raise ValueError(f"server_learning_rate must be in (0, 10], got {server_learning_rate!r}")
        super().__init__(**kwargs)
        self.server_learning_rate = float(server_learning_rate)
        self.control: dict[str, np.ndarray] | None = None
        self._global: ArrayRecord | None = None
        self._available = 1

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self._global = arrays
        self._available = max(1, len(list(grid.get_node_ids())))
        if self.control is None:
            self.control = {k: np.zeros_like(v.numpy(), dtype=np.float64) for k, v in arrays.items()}
        messages = list(super().configure_train(server_round, arrays, config, grid))
        control = ArrayRecord({k: Array(v) for k, v in self.control.items()})
        for msg in messages:
            content = RecordDict(dict(msg.content.items()))
            content[CONTROL] = control
            msg.content = content
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(list(replies), is_train=True, validate=False)
        valid = [m for m in valid if CONTROL_DELTA in m.content.array_records]
        if not valid or self._global is None or self.control is None:
            return None, None
        names = list(self._global.keys())
        x = {n: self._global[n].numpy().astype(np.float64) for n in names}
        step = {n: np.mean([m.content[self.arrayrecord_key][n].numpy() - x[n] for m in valid], axis=0) for n in names}
        dc = {n: np.mean([m.content[CONTROL_DELTA][n].numpy() for m in valid], axis=0) for n in names}
        share = min(1.0, len(valid) / self._available)
        for n in names:
            self.control[n] = self.control[n] + share * dc[n]
        template = self._global
        arrays = ArrayRecord({n: Array((x[n] + self.server_learning_rate * step[n]).astype(template[n].numpy().dtype))
                              for n in names})
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        return arrays, metrics
