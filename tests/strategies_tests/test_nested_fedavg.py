"""NestedFedAvg: clients on nested circuit depths, each layer averaged over those that hold it."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from helpers import make_reply

from qfl.common.config import ConfigError, RunConfig
from qfl.common.contract import REPORT_LAYERS
from strategies import NestedFedAvg, load_strategy
from strategies.nested_fedavg import held_rows

LAYERS, QUBITS = 4, 3
GLOBAL = {"weights": np.linspace(-1.0, 1.0, LAYERS * QUBITS * 3).reshape(LAYERS, QUBITS, 3),
          "scale": np.full(3, 2.0), "bias": np.zeros(3)}


@pytest.fixture(autouse=True)
def _identity(task_identity):
    pass


class _Grid:
    """What ``configure_train`` samples from: nodes 0..3."""

    def get_node_ids(self):  # noqa: ANN201
        return list(range(4))


def _client(node: int, layers: int, examples: float, rng: np.random.Generator):  # noqa: ANN202
    """A reply holding the first ``layers`` layers, each moved by noise."""
    params = {k: v + rng.normal(scale=0.1, size=v.shape) for k, v in GLOBAL.items()}
    params["weights"] = params["weights"][:layers]
    return make_reply(params, examples, node), params


def _configure(strategy, server_round: int = 1):  # noqa: ANN001, ANN202
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    return {m.metadata.dst_node_id: m for m in strategy.configure_train(server_round, arrays, ConfigRecord(), _Grid())}


def test_equals_fedavg_when_every_circuit_is_the_same():
    # Arrange: four clients on the full circuit, different example counts
    rng = np.random.default_rng(0)
    replies = [_client(node, LAYERS, examples, rng)[0] for node, examples in enumerate((10, 25, 7, 40))]
    nested, fedavg = NestedFedAvg(), FedAvg()
    _configure(nested), _configure(fedavg)

    # Act
    ours, _ = nested.aggregate_train(1, replies)
    theirs, _ = fedavg.aggregate_train(1, replies)

    # Assert: the same names, shapes and values
    assert set(ours.keys()) == set(theirs.keys())
    for name in theirs.keys():
        np.testing.assert_allclose(ours[name].numpy(), theirs[name].numpy(), rtol=1e-14, atol=1e-15)
        assert ours[name].numpy().shape == GLOBAL[name].shape


def test_each_layer_is_averaged_over_the_clients_that_hold_it():
    # Arrange: depths 1, 2, 4, 4 with examples 10, 20, 30, 40
    rng = np.random.default_rng(1)
    strategy = NestedFedAvg()
    _configure(strategy)
    made = [_client(node, layers, 10.0 * (node + 1), rng) for node, layers in enumerate((1, 2, 4, 4))]

    # Act
    arrays, _ = strategy.aggregate_train(1, [m for m, _ in made])

    # Assert
    w = arrays["weights"].numpy()
    params = [p for _, p in made]
    assert np.allclose(w[0], sum(n * p["weights"][0] for n, p in zip((10, 20, 30, 40), params)) / 100)
    assert np.allclose(w[1], sum(n * p["weights"][1] for n, p in zip((20, 30, 40), params[1:])) / 90)
    assert np.allclose(w[2:], (30 * params[2]["weights"][2:] + 40 * params[3]["weights"][2:]) / 70)
    assert np.allclose(arrays["scale"].numpy(), sum(n * p["scale"] for n, p in zip((10, 20, 30, 40), params)) / 100)
    assert {node: said[REPORT_LAYERS] for node, said in strategy.round_report().clients.items()} == {0: 1, 1: 2, 2: 4, 3: 4}


def test_the_shallowest_client_receives_and_returns_only_its_layers():
    # Arrange: round 1 tells the server each node's depth
    rng = np.random.default_rng(2)
    strategy = NestedFedAvg()
    first = _configure(strategy)
    strategy.aggregate_train(1, [_client(node, layers, 20, rng)[0] for node, layers in enumerate((1, 2, 4, 4))])

    # Act: round 2
    sent = _configure(strategy, 2)

    # Assert: node 0 receives one layer, node 1 two, the others all; the read-out whole
    assert first[0].content["arrays"]["weights"].numpy().shape == (LAYERS, QUBITS, 3)  # not heard from yet
    shapes = {node: msg.content["arrays"]["weights"].numpy().shape[0] for node, msg in sent.items()}
    assert shapes == {0: 1, 1: 2, 2: LAYERS, 3: LAYERS}
    assert sent[0].content["arrays"]["scale"].numpy().shape == (3,)
    np.testing.assert_array_equal(sent[0].content["arrays"]["weights"].numpy(), GLOBAL["weights"][:1])


def test_a_reply_with_layers_it_was_not_sent_or_a_foreign_shape_is_left_out():
    # Arrange: node 0 holds one layer, then returns two; node 1 returns a read-out of the wrong size
    rng = np.random.default_rng(3)
    strategy = NestedFedAvg()
    _configure(strategy)
    strategy.aggregate_train(1, [_client(node, layers, 20, rng)[0] for node, layers in enumerate((1, 4, 4, 4))])
    _configure(strategy, 2)
    greedy = _client(0, 2, 20, rng)[0]
    odd, _ = _client(1, LAYERS, 20, rng)
    odd.content["arrays"] = ArrayRecord({**{k: v for k, v in odd.content["arrays"].items()}, "scale": Array(np.ones(2))})
    honest = [_client(node, LAYERS, 20, rng)[0] for node in (2, 3)]

    # Act
    arrays, _ = strategy.aggregate_train(2, [greedy, odd, *honest])

    # Assert: the two honest replies alone make the model
    assert set(strategy.round_report().clients) == {2, 3}
    expected = (honest[0].content["arrays"]["weights"].numpy() + honest[1].content["arrays"]["weights"].numpy()) / 2
    np.testing.assert_allclose(arrays["weights"].numpy(), expected)


def test_family_membership_of_shapes():
    reference = {k: v.shape for k, v in GLOBAL.items()}
    assert held_rows({**reference, "weights": (2, QUBITS, 3)}, reference) == {"weights": 2, "scale": 0, "bias": 0}
    assert isinstance(held_rows({**reference, "weights": (5, QUBITS, 3)}, reference), str)  # deeper than the global
    assert isinstance(held_rows({**reference, "weights": (2, QUBITS, 2)}, reference), str)
    assert isinstance(held_rows({**reference, "bias": (2,)}, reference), str)  # no layer axis: whole or nothing


def test_registered_by_name_and_refused_where_it_does_not_compose(defaults):
    assert isinstance(load_strategy("nested-fedavg"), NestedFedAvg)
    base = {**defaults, "strategy": "nested-fedavg"}
    with pytest.raises(ConfigError, match="'strategy'.*secure aggregation"):
        RunConfig.from_run_config({**base, "transport": "secagg"})
    with pytest.raises(ConfigError, match="'strategy'.*nested-fedavg"):
        RunConfig.from_run_config({**defaults, "architecture": "by-device"})
    with pytest.raises(ConfigError, match="'transport'"):
        RunConfig.from_run_config({**base, "architecture": "search", "transport": "dp"})
    assert RunConfig.from_run_config({**base, "architecture": "by-device"}).architecture == "by-device"


def test_a_client_on_a_noisy_device_trains_and_returns_only_its_layers(defaults, tmp_path, monkeypatch):
    # Arrange: a noisy device on which no depth reaches the fidelity floor: one layer of the global three
    from client.job import request
    from client.local import answer
    from qfl.common.contract import CIRCUIT_LAYERS, DEVICE, DEVICE_CIRCUIT, METRICS, PREDICTED_FIDELITY
    from qfl.task.build import build_dataset, build_model

    monkeypatch.setenv("QFL_STATE_DIR", str(tmp_path))
    run = {**defaults, "dataset": "iris", "n-qubits": 3, "n-layers": 3, "local-epochs": 1, "strategy": "nested-fedavg",
           "architecture": "by-device", "device-profiles": "noisy-nisq", "min-fidelity": 0.9}
    cfg = RunConfig.from_run_config(run)
    arrays = ArrayRecord(build_model(cfg, build_dataset(cfg)).state_dict())
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1, "round-offset": 0})})

    # Act: the server sends the whole model (it has not heard from the node yet)
    reply = answer(request("train", content, run, {"partition-id": 0, "num-partitions": 2}))

    # Assert
    assert reply["arrays"]["weights"].numpy().shape == (1, 3, 3)
    assert reply[METRICS][CIRCUIT_LAYERS] == 1.0 and 0 < reply[METRICS][PREDICTED_FIDELITY] < 0.9
    assert reply[DEVICE][DEVICE_CIRCUIT] == "L1-ring-rot-reupload"


def test_behind_the_guard_nested_replies_pass_its_screens_and_average_as_without_it():
    from server.instrumented import InstrumentedStrategy

    # Arrange: depths 1, 2, 4, 4; the guard's schema check alone, and with its screens on
    rng = np.random.default_rng(1)
    made = [_client(node, layers, 10.0 * (node + 1), rng) for node, layers in enumerate((1, 2, 4, 4))]
    alone, guarded = NestedFedAvg(), InstrumentedStrategy(NestedFedAvg())
    screened = InstrumentedStrategy(NestedFedAvg(), norm_factor=4.0, direction=True)
    _configure(alone)
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    for strategy in (guarded, screened):
        list(strategy.configure_train(1, arrays, ConfigRecord(), _Grid()))

    # Act
    want, _ = alone.aggregate_train(1, [m for m, _ in made])
    got, _ = guarded.aggregate_train(1, [m for m, _ in made])
    screened_arrays, _ = screened.aggregate_train(1, [m for m, _ in made])

    # Assert: the same layer-wise average through the guard; its screens reject no reply for its depth
    for name in GLOBAL:
        np.testing.assert_allclose(got[name].numpy(), want[name].numpy(), rtol=1e-12)
    for strategy in (guarded, screened):
        rows = strategy.take_client_rows()
        assert len(rows) == 4 and not [r for r in rows if str(r["status"]).startswith("rejected")], rows
    assert screened_arrays["weights"].numpy().shape == GLOBAL["weights"].shape


def test_behind_the_guard_a_reply_deeper_than_it_was_sent_is_rejected_and_named():
    from server.instrumented import InstrumentedStrategy

    rng = np.random.default_rng(3)
    guarded = InstrumentedStrategy(NestedFedAvg())
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    list(guarded.configure_train(1, arrays, ConfigRecord(), _Grid()))
    guarded.aggregate_train(1, [_client(node, layers, 20, rng)[0] for node, layers in enumerate((1, 2, 4, 4))])
    list(guarded.configure_train(2, arrays, ConfigRecord(), _Grid()))  # node 0 is now sent one layer
    guarded.take_client_rows()

    guarded.aggregate_train(2, [_client(node, 4, 20, rng)[0] for node in range(4)])

    rows = {r["node_id"]: str(r["status"]) for r in guarded.take_client_rows()}
    assert rows[0].startswith("rejected: returns layers it was not sent")
    assert not rows[1].startswith("rejected") or "not sent" in rows[1]
