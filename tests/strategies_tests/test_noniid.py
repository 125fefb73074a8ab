"""Learning across non-IID clients: drift corrections and a trainable embedding.

Each strategy name runs a 2-round federation in this process (the real ClientApp, the real
strategies behind the server's guard; ``helpers.InProcessFederation``); SCAFFOLD, whose
clients keep state between rounds, also runs on real Flower processes in
test_integration.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import InProcessFederation

from qfl.common.contract import ROUND_CLIENTS_OK, ROUND_CLIENTS_REJECTED
from qfl.task.model import PQCClassifier
from qfl.task.train import train_local

DRIFT_STRATEGIES = ["fedprox", "scaffold", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "krum", "multikrum"]


def _data(seed=0, n=24):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, np.pi, (n, 4)), rng.integers(0, 3, n)


def test_the_proximal_term_is_mu_half_the_squared_distance_and_pulls_towards_the_start():
    x, y = _data()
    start = PQCClassifier(4, 2, 3, seed=1).state_dict()
    # known answer: d/dw (mu/2 ||w - w0||^2) = mu (w - w0), here mu * 0.3 on every weight
    model = PQCClassifier(4, 2, 3, seed=1)
    with torch.no_grad():
        model.weights += 0.3
    anchor = {n: v.clone() for n, v in start.items()}
    mu = 0.7
    term = 0.5 * mu * sum(((p - anchor[n]) ** 2).sum() for n, p in model.named_parameters())
    term.backward()
    np.testing.assert_allclose(model.weights.grad.numpy(), mu * 0.3 * np.ones_like(model.weights.detach().numpy()), rtol=1e-12)
    # and in training: the larger mu, the nearer the update stays to the global model
    distance = []
    for mu in (0.0, 1.0, 100.0):
        model = PQCClassifier(4, 2, 3, seed=1)
        train_local(model, x, y, epochs=5, batch_size=8, learning_rate=0.1, seed=3, proximal_mu=mu)
        distance.append(sum(float(((model.state_dict()[n] - start[n]) ** 2).sum()) for n in start) ** 0.5)
    assert distance[0] > distance[1] > distance[2]
    assert distance[2] < 0.3 * distance[0]


@pytest.mark.parametrize("strategy", DRIFT_STRATEGIES)
def test_each_drift_strategy_runs_a_two_round_federation(defaults, task_identity, strategy):
    options = {"fedprox": "{ proximal-mu = 0.5 }", "krum": "{ num-malicious-nodes = 0 }",
               "multikrum": "{ num-malicious-nodes = 0, num-nodes-to-select = 2 }",
               "fedadam": "{ eta = 0.05 }", "fedyogi": "{ eta = 0.05 }", "fedadagrad": "{ eta = 0.05 }"}.get(strategy, "{}")
    fed = InProcessFederation({**defaults, "dataset": "iris", "local-epochs": 2, "learning-rate": 0.1, "strategy": strategy,
                               "strategy-options": options}, clients=3).run(2)
    assert all(s[ROUND_CLIENTS_OK] == 3 and s[ROUND_CLIENTS_REJECTED] == 0 for s in fed.stats), fed.stats
    assert fed.accuracy[-1] > fed.accuracy[0]  # it learns


def test_scaffold_keeps_each_clients_control_variate_in_its_node_state(defaults, task_identity):
    fed = InProcessFederation({**defaults, "dataset": "iris", "local-epochs": 2, "learning-rate": 0.1,
                               "strategy": "scaffold"}, clients=3).run(2)
    scaffold = fed.guard.strategy
    assert any(np.abs(v).sum() > 0 for v in scaffold.control.values())  # c moved
    for state in fed.states.values():
        own = state.array_records["client-control"]  # c_i, on the node, not sent back
        assert set(own.keys()) == set(fed.arrays.keys())


@pytest.mark.parametrize("dataset", ["iris", "tfim"])
def test_a_trainable_embedding_travels_and_aggregates(defaults, task_identity, dataset):
    run_config = {**defaults, "dataset": dataset, "local-epochs": 2, "learning-rate": 0.1, "embedding": "trainable"}
    fed = InProcessFederation(run_config, clients=2)
    before = fed.arrays["embedding"].numpy().copy()
    fed.run(1)
    after = fed.arrays["embedding"].numpy()
    assert after.shape == before.shape and not np.allclose(after, before)  # sent, trained, averaged back
    replies = [r for r in fed.rows if r["status"] == "ok"]
    assert len(replies) == 2
