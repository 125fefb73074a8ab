"""Associating clients with repeaters: a matching game under memory capacities.

Each client :math:`c` has a utility :math:`u(c, r)` for each repeater :math:`r` it can reach
(e.g. the expected fidelity of its pairs over that route minus a price on their latency,
:func:`utilities`); each repeater has ``capacity`` memory slots and prefers the clients it
would serve best (by the same utility, so both sides rank by delivered quality). Three
associations of the same instance:

- :func:`deferred_acceptance` (Gale-Shapley, client-proposing, with capacities): each client
  proposes to its best repeater not yet refused; a full repeater keeps its preferred
  proposers and refuses the rest. The result is **stable**: no client and repeater would both
  rather be matched to each other than to what they got (:func:`blocking_pairs` is empty),
  so no client has a reason to defect to a repeater that would take it, and it is the best
  stable association for every client;
- :func:`hungarian`: the association of largest total utility
  (``scipy.optimize.linear_sum_assignment`` over the repeaters' slots), which may leave a
  client and a repeater that would both prefer each other;
- :func:`greedy`: clients in a fixed order take their best repeater with a free slot.

``tests/transport_tests/test_matching.py`` compares the three on the named topologies and on
random instances: stability, total utility, and capacities.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

Utilities = dict[str, dict[str, float]]  # client -> repeater -> utility (absent: unreachable)
UNREACHABLE = 1e9  # the cost of a slot a client cannot reach


def utilities(network, latency_price: float = 1.0, samples: int = 256, seed: int = 0) -> Utilities:  # noqa: ANN001
    """:math:`u(c, r) = \\bar F(c, r) - \\lambda \\bar t(c, r)` for every client and repeater
    of a :class:`~transport.qcn_network.QCNNetwork` (mean fidelity and latency in seconds of
    the pairs over the route, seeded Monte Carlo)."""
    out: Utilities = {}
    for client in network.clients:
        out[client] = {}
        for repeater in network.repeaters:
            fidelity, latency = network.expected(client, repeater, samples, seed)
            out[client][repeater] = fidelity - latency_price * latency
    return out


def deferred_acceptance(utility: Utilities, capacity: dict[str, int]) -> dict[str, str]:
    """Client-proposing Gale-Shapley with capacities; ``{client: repeater}`` (a client left
    out when every repeater it can reach is full of clients it prefers)."""
    ranking = {c: sorted(us, key=lambda r: (-us[r], r)) for c, us in utility.items()}
    next_choice = {c: 0 for c in utility}
    held: dict[str, list[str]] = {r: [] for r in capacity}
    free = sorted(utility)
    while free:
        client = free.pop(0)
        if next_choice[client] >= len(ranking[client]):
            continue  # refused everywhere
        repeater = ranking[client][next_choice[client]]
        next_choice[client] += 1
        held[repeater].append(client)
        held[repeater].sort(key=lambda c: (-utility[c][repeater], c))
        if len(held[repeater]) > capacity[repeater]:
            free.append(held[repeater].pop())  # the repeater's least preferred proposer
    return {c: r for r, cs in held.items() for c in cs}


def hungarian(utility: Utilities, capacity: dict[str, int]) -> dict[str, str]:
    """The association of largest total utility (each repeater's slots as columns; a client
    may stay unmatched, at utility 0)."""
    clients = sorted(utility)
    slots = [r for r in sorted(capacity) for _ in range(capacity[r])]
    # one "unmatched" column per client (utility 0), unreachable slots priced out
    cost = np.hstack([np.full((len(clients), len(slots)), UNREACHABLE), np.zeros((len(clients), len(clients)))])
    for i, c in enumerate(clients):
        for j, r in enumerate(slots):
            if r in utility[c]:
                cost[i, j] = -utility[c][r]
    rows, cols = linear_sum_assignment(cost)
    return {clients[i]: slots[j] for i, j in zip(rows, cols) if j < len(slots) and cost[i, j] < UNREACHABLE}


def greedy(utility: Utilities, capacity: dict[str, int]) -> dict[str, str]:
    """Clients in name order, each to its best repeater with a free slot."""
    free = dict(capacity)
    out = {}
    for client in sorted(utility):
        for repeater in sorted(utility[client], key=lambda r: (-utility[client][r], r)):
            if free[repeater] > 0:
                out[client], free[repeater] = repeater, free[repeater] - 1
                break
    return out


def blocking_pairs(association: dict[str, str], utility: Utilities, capacity: dict[str, int]) -> list[tuple[str, str]]:
    """``(client, repeater)`` pairs that would both rather be matched to each other: the client
    prefers the repeater to what it got, and the repeater has a free slot or holds a client it
    prefers less."""
    holding: dict[str, list[str]] = {r: [] for r in capacity}
    for c, r in association.items():
        holding[r].append(c)
    out = []
    for client, us in sorted(utility.items()):
        mine = us.get(association.get(client, ""), -np.inf)
        for repeater, u in us.items():
            if u <= mine:
                continue
            held = holding[repeater]
            if len(held) < capacity[repeater] or any(utility[h][repeater] < u for h in held):
                out.append((client, repeater))
    return out


def total_utility(association: dict[str, str], utility: Utilities) -> float:
    return float(sum(utility[c][r] for c, r in association.items()))
