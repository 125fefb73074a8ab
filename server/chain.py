"""The strategy Flower runs for a run: the named one, wrapped as the run asks.

From the wire inwards: the server's guard (``server.instrumented``, added by the ServerApp),
a round deadline, central DP, the named strategy. No torch here: the launcher builds the
chain before launch to check a strategy's name and options.
"""

from __future__ import annotations

from flwr.serverapp.strategy import Strategy

from qfl.common.config import RunConfig
from strategies import RoundDeadline, load_strategy, parse_strategy_options
from strategies.central_dp import CentralDPFixedClipping


def build_strategy(cfg: RunConfig):  # -> flwr.serverapp.strategy.Strategy
    """The strategy the run config names, with its sampling settings and options.

    Every strategy gets FedAvg's sampling keywords, then ``strategy-options``.
    """
    options = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        # Wait for `min-nodes` once, before round 1; after that a round goes on with
        # the nodes still connected, so a node that dies cannot stall the run.
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1 if cfg.fraction_evaluate > 0 else 0,
        "min_available_nodes": 1,
    }
    options.update(parse_strategy_options(cfg.strategy_options))
    return load_strategy(cfg.strategy, **options)


def server_strategy(cfg: RunConfig) -> tuple[Strategy, CentralDPFixedClipping | None, tuple[str, ...]]:
    """The named strategy wrapped as the run asks (central DP, then a round deadline), and
    the ArrayRecords its replies carry besides the parameters (a strategy declares them in
    ``reply_arrays``, as SCAFFOLD does)."""
    inner: Strategy = build_strategy(cfg)
    reply_arrays = tuple(getattr(inner, "reply_arrays", ()))
    central_dp = None
    if cfg.uses_transport("dp") and cfg.dp_mode == "central" and not cfg.uses_transport("secagg"):
        # (with secagg the nodes clip and noise: distributed DP, transport.secagg_flower)
        inner = central_dp = CentralDPFixedClipping(inner, cfg.dp_noise_multiplier, cfg.dp_clip)
    if cfg.round_deadline > 0:
        inner = RoundDeadline(inner, cfg.round_deadline, cfg.straggler_policy, cfg.staleness_discount)
    return inner, central_dp, reply_arrays


def guard_screens(cfg: RunConfig) -> tuple[float, float, bool]:
    """``(robust-norm-factor, robust-examples-factor, robust-direction)`` for the server's guard.

    Under central DP the screens that compare one reply with the others are off: which
    replies they keep would depend on every client's data, and the sensitivity the ledger
    counts (one client moves the average by at most 2C/m) would not hold. Clipping to C
    bounds each client's pull instead; the per-reply checks (schema, finite values, claims)
    stay, and a reply they refuse adds zero to the sum (docs/transport.md).
    """
    if (cfg.uses_transport("dp") and cfg.dp_mode == "central") or cfg.uses_transport("secagg"):
        return 0.0, 0.0, False  # secure aggregation: one reply, the sum
    return cfg.robust_norm_factor, cfg.robust_examples_factor, cfg.robust_direction
