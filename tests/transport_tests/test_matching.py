"""A shared quantum network (transport/qcn_network.py) and the association of clients with its
repeaters (transport/matching.py): deferred acceptance against the Hungarian optimum and greedy."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest

from transport import matching
from transport.qcn import QCNPath
from transport.qcn_network import TOPOLOGIES, QCNNetwork, load_topology


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_named_topologies_give_single_paths_of_the_existing_model(name):
    network = load_topology(name)
    assert len(network.clients) == 6 and network.repeaters
    for client in network.clients:
        for repeater in network.repeaters:
            route = network.route(client, repeater)
            assert route[0] == client and route[-1] == "server" and repeater in route
            assert not set(route[1:]) & set(network.clients)  # no route relays through another client
            path = network.path(client, repeater)
            assert isinstance(path, QCNPath) and path.hops >= 1
    fidelity, latency = network.expected(network.clients[0], network.repeaters[0])
    assert 0.25 < fidelity < 1 and latency > 0
    assert network.expected(network.clients[0], network.repeaters[0]) == (fidelity, latency)  # seeded


def test_clients_share_links_under_an_association():
    network = load_topology("star-overloaded")
    shared = network.shared_links({c: "hub" for c in network.clients})
    assert sorted(shared[("hub", "server")]) == network.clients  # one backbone link for all six


def test_a_users_topology_loads_from_node_link_json_and_bad_ones_are_named(tmp_path):
    graph = TOPOLOGIES["metro-ring"]()
    (tmp_path / "mine.json").write_text(json.dumps(nx.node_link_data(graph, edges="links")))
    assert load_topology(str(tmp_path / "mine.json")).clients == load_topology("metro-ring").clients
    graph.nodes["r0"]["memory_slots"] = 0
    with pytest.raises(ValueError, match="repeater 'r0' needs memory_slots >= 1"):
        QCNNetwork(graph)
    with pytest.raises(ValueError, match="neither a name"):
        load_topology("no-such-topology")


def _random_instance(rng, clients=8, repeaters=4):  # noqa: ANN001, ANN202
    utility = {f"c{i}": {f"r{j}": float(rng.uniform()) for j in range(repeaters) if rng.uniform() < 0.85}
               for i in range(clients)}
    capacity = {f"r{j}": int(rng.integers(1, 3)) for j in range(repeaters)}
    return utility, capacity


def test_deferred_acceptance_is_stable_within_capacities_and_the_optimum_is_at_least_as_good():
    rng = np.random.default_rng(0)
    unstable_greedy = unstable_optimum = 0
    for _ in range(200):
        utility, capacity = _random_instance(rng)
        da, best, first = (f(utility, capacity) for f in (matching.deferred_acceptance, matching.hungarian, matching.greedy))
        for assoc in (da, best, first):
            assert all(list(assoc.values()).count(r) <= capacity[r] for r in capacity)
            assert all(r in utility[c] for c, r in assoc.items())
        assert matching.blocking_pairs(da, utility, capacity) == []
        assert matching.total_utility(best, utility) >= matching.total_utility(da, utility) - 1e-12
        unstable_greedy += bool(matching.blocking_pairs(first, utility, capacity))
        unstable_optimum += bool(matching.blocking_pairs(best, utility, capacity))
    # what stability buys: the other two leave clients and repeaters that would defect together
    assert unstable_greedy > 20 and unstable_optimum > 20


def test_on_the_overloaded_star_the_hub_keeps_the_clients_it_serves_best():
    network = load_topology("star-overloaded")
    utility = matching.utilities(network, samples=64)
    capacity = {r: network.capacity(r) for r in network.repeaters}
    da = matching.deferred_acceptance(utility, capacity)
    on_hub = sorted(c for c, r in da.items() if r == "hub")
    assert len(on_hub) == 2  # its two memory slots
    best_two = sorted(sorted(network.clients, key=lambda c: -utility[c]["hub"])[:2])
    assert on_hub == best_two
    assert matching.blocking_pairs(da, utility, capacity) == [] and len(da) == 6
