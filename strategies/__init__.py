"""Aggregation strategies for quantum federated learning, selectable by name."""

from strategies.central_dp import CentralDPFixedClipping
from strategies.deadline import RoundDeadline
from strategies.fidelity_weighted import FidelityWeightedFedAvg, fidelity_weight, unpack_mask
from strategies.inverse_variance import InverseVarianceFedAvg, inverse_variance_weights
from strategies.nested_fedavg import NestedFedAvg, nested_average
from strategies.noise_isolating import ClientNoise, NoiseIsolatingFedAvg, dersimonian_laird, separate_noise
from strategies.noise_isolating_median import ClientNoiseEstimate, MedianNoiseIsolatingFedAvg, isolate_noise
from strategies.oracle import NoisyDeviceOracle
from strategies.registry import BUILTIN_STRATEGIES, load_strategy, parse_strategy_options, resolve_strategy
from strategies.guard import filter_replies, reply_problem

__all__ = [
    "BUILTIN_STRATEGIES",
    "CentralDPFixedClipping",
    "ClientNoise",
    "ClientNoiseEstimate",
    "FidelityWeightedFedAvg",
    "InverseVarianceFedAvg",
    "MedianNoiseIsolatingFedAvg",
    "NestedFedAvg",
    "NoiseIsolatingFedAvg",
    "NoisyDeviceOracle",
    "RoundDeadline",
    "dersimonian_laird",
    "fidelity_weight",
    "inverse_variance_weights",
    "filter_replies",
    "isolate_noise",
    "load_strategy",
    "nested_average",
    "parse_strategy_options",
    "reply_problem",
    "resolve_strategy",
    "separate_noise",
    "unpack_mask",
]
