"""A FedAvg that keeps the round's global model, for strategies that weigh each update
against it (:mod:`strategies.noise_isolating`, :mod:`strategies.noise_isolating_median`)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from qfl.common.records import flatten
from strategies.guard import filter_replies, shapes_of


class GlobalModelFedAvg(FedAvg):
    """FedAvg that remembers, from :meth:`configure_train`, the parameters' names and shapes
    (the reference every reply must match) and the global model as one flat vector
    :math:`\\theta \\in \\mathbb{R}^d`, in the order of those names."""

    def __init__(self, **kwargs) -> None:  # noqa: ANN003 (FedAvg's)
        super().__init__(**kwargs)
        self._reference: dict[str, tuple[int, ...]] | None = None
        self._global: np.ndarray | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._reference = shapes_of(arrays)
        self._global = flatten(arrays, list(self._reference))
        return super().configure_train(server_round, arrays, config, grid)

    def reference_for(self, replies: list[Message]) -> dict[str, tuple[int, ...]] | None:
        """The shapes replies must match: the global model's, or, when called without
        :meth:`configure_train`, the first sound reply's; ``None`` if there is none."""
        if self._reference is not None:
            return self._reference
        sound = [m for m in replies if not m.has_error()]
        return shapes_of(sound[0].content[self.arrayrecord_key]) if sound else None

    def sound_replies(self, replies: list[Message]) -> tuple[dict[str, tuple[int, ...]] | None, list[Message]]:
        """The shapes replies must match and the replies that match them and pass FedAvg's
        checks; ``(None, [])`` when no reply is sound to take shapes from (the caller then
        leaves the round to FedAvg, which counts the failures)."""
        reference = self.reference_for(replies)
        if reference is None:
            return None, []
        replies, _ = filter_replies(replies, reference, self.arrayrecord_key, self.weighted_by_key)
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        return reference, list(valid)
