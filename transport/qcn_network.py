"""A shared quantum network: repeaters and links that the clients' paths have in common.

A :class:`QCNNetwork` is a networkx graph. Nodes are ``"server"``, clients and repeaters;
a repeater has ``memory_slots`` (how many clients it can hold pairs for at once) and a
memory ``coherence_time_s``; every link has its ``length_km``, ``p_gen`` (success of one
generation attempt before fibre loss), ``link_fidelity`` and, optionally, ``pair_rate_hz``:
the elementary Bell pairs per second the link is provisioned to herald for the federation
(absent: unlimited). Over a round of ``round-deadline`` seconds a link's pairs are a budget
that every client routed over it shares (:mod:`transport.qcn_schedule`). A client reaches the server
through one repeater it is associated with (:mod:`transport.matching` decides which); the
route is the shortest client -> repeater -> server path, and :meth:`QCNNetwork.path`
turns it into the single-path model of :mod:`transport.qcn` (a :class:`~transport.qcn.QCNPath`),
whose physics is reused as it is: total length, the repeaters on the route as hops, the
weakest link's generation probability and fidelity, the shortest coherence time.

Named topologies (:data:`TOPOLOGIES`, with keyword overrides: ``"metro-ring:clients=50"``),
or a user's own from a JSON file in networkx's node-link format (:func:`load_topology`):

- ``metro-ring``: ``clients`` (6) clients on a ring of four metro repeaters, two of which
  hold the backbone to the server; the backbone repeaters' memories are scarce (2 slots
  each, or a third of the clients), the others have room but short memories; the two
  backbone links carry every client's pairs;
- ``star-overloaded``: ``clients`` (6) clients around one central repeater with
  ``hub_slots`` (2) memory slots (the bottleneck) and two far, poorer repeaters with room
  to spare; each far repeater's link to the server is shared by the clients it serves.

Partition *p* of a run is client ``clients[p mod len(clients)]`` (:meth:`QCNNetwork.client_of`).

Physical parameters follow :data:`transport.qcn.PATHS` (metro-scale links: 0.2 dB/km fibre,
p_gen 0.3-0.5, link fidelities 0.93-0.99, memories of 4 ms to 1 s, as reported for
trapped-ion, NV and atomic-ensemble repeater nodes). Link rates are provisioned rates of
tens of kHz: what a link of this model heralds on a few multiplexed channels
(:math:`p c / 2L` per channel: about 3 kHz for 10 km at p_gen 0.5), of the order
targeted for multiplexed repeaters (Sangouard et al., Rev. Mod. Phys. 83, 33 (2011);
Muralidharan et al., Sci. Rep. 6, 20463 (2016)); they are chosen so that the shared links
are what runs out first, the regime the scheduler is for.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import networkx as nx
import numpy as np

from transport.qcn import QCNPath, sample_pairs

SERVER = "server"


class QCNNetwork:
    """Clients, repeaters and the server on a graph (see the module doc)."""

    def __init__(self, graph: nx.Graph) -> None:
        if SERVER not in graph:
            raise ValueError("a QCN topology needs a node named 'server'")
        for node, data in graph.nodes(data=True):
            kind = data.get("kind")
            if kind not in ("client", "repeater", "server"):
                raise ValueError(f"node {node!r}: kind must be client, repeater or server, got {kind!r}")
            if kind == "repeater" and not (int(data.get("memory_slots", 0)) >= 1 and data.get("coherence_time_s", 0) > 0):
                raise ValueError(f"repeater {node!r} needs memory_slots >= 1 and coherence_time_s > 0")
        for a, b, data in graph.edges(data=True):
            for key in ("length_km", "p_gen", "link_fidelity"):
                if key not in data:
                    raise ValueError(f"link {a!r}-{b!r} has no {key}")
        self.graph = graph
        self._routes: dict[tuple[str, str], list[str]] = {}  # the graph is not changed after this

    @property
    def clients(self) -> list[str]:
        return sorted(n for n, d in self.graph.nodes(data=True) if d["kind"] == "client")

    @property
    def repeaters(self) -> list[str]:
        return sorted(n for n, d in self.graph.nodes(data=True) if d["kind"] == "repeater")

    def capacity(self, repeater: str) -> int:
        return int(self.graph.nodes[repeater]["memory_slots"])

    def client_of(self, partition: int) -> str:
        """The client a run's partition is: ``clients[partition mod len(clients)]``."""
        clients = self.clients
        if not clients:
            raise ValueError("the QCN topology has no client node")
        return clients[partition % len(clients)]

    def links(self, client: str, repeater: str) -> list[tuple[str, str]]:
        """The links of the route, each as a sorted node pair."""
        nodes = self.route(client, repeater)
        return [tuple(sorted((a, b))) for a, b in zip(nodes, nodes[1:])]

    def link_budget(self, link: tuple[str, str], seconds: float) -> float:
        """Elementary Bell pairs ``link`` heralds in ``seconds`` (``inf`` without a rate or a window)."""
        rate = self.graph.edges[link].get("pair_rate_hz")
        return math.inf if rate is None or not seconds > 0 else float(rate) * seconds

    def route(self, client: str, repeater: str) -> list[str]:
        """The shortest client -> repeater -> server route (by length), through no other client."""
        if (client, repeater) not in self._routes:
            self._routes[(client, repeater)] = self._route(client, repeater)
        return list(self._routes[(client, repeater)])

    def _route(self, client: str, repeater: str) -> list[str]:
        others = {c for c in self.clients if c != client}
        to_repeater = nx.subgraph_view(self.graph, filter_node=lambda n: n not in others)
        to_server = nx.subgraph_view(self.graph, filter_node=lambda n: n not in others and n != client)
        first = nx.shortest_path(to_repeater, client, repeater, weight="length_km")
        second = nx.shortest_path(to_server, repeater, SERVER, weight="length_km")
        return first + second[1:]

    def path(self, client: str, repeater: str, cutoff_s: float | None = None, distillation_rounds: int = 0,
             protocol: str = "bbpssw") -> QCNPath:
        """The route as :class:`~transport.qcn.QCNPath` (the single-path physics reused): its
        links become the path's segments (the route's length over its hops + 1 links)."""
        nodes = self.route(client, repeater)
        links = [self.graph.edges[a, b] for a, b in zip(nodes, nodes[1:])]
        relays = [self.graph.nodes[n] for n in nodes if self.graph.nodes[n]["kind"] == "repeater"]
        coherence = min(r["coherence_time_s"] for r in relays)
        return QCNPath(
            distance_km=sum(e["length_km"] for e in links), hops=len(relays),
            p_gen=min(e["p_gen"] for e in links), link_fidelity=min(e["link_fidelity"] for e in links),
            coherence_time_s=coherence, cutoff_s=cutoff_s if cutoff_s is not None else coherence / 2,
            swap_fidelity=min(r.get("swap_fidelity", 0.99) for r in relays), distillation_rounds=distillation_rounds,
            protocol=protocol,
        )

    def coherence_time(self, client: str, repeater: str) -> float:
        """The shortest memory coherence time on the route (s): the scale of its cutoffs."""
        return min(self.graph.nodes[n]["coherence_time_s"] for n in self.route(client, repeater)
                   if self.graph.nodes[n]["kind"] == "repeater")

    def expected(self, client: str, repeater: str, samples: int = 256, seed: int = 0) -> tuple[float, float]:
        """``(mean fidelity, mean latency_s)`` of the pairs over that route (seeded Monte Carlo)."""
        fid, lat = sample_pairs(self.path(client, repeater), samples, np.random.default_rng([seed, samples]))
        return float(fid.mean()), float(lat.mean())

    def shared_links(self, association: dict[str, str]) -> dict[tuple[str, str], list[str]]:
        """For each link, the clients whose routes use it (under ``association``)."""
        use: dict[tuple[str, str], list[str]] = {}
        for client, repeater in sorted(association.items()):
            nodes = self.route(client, repeater)
            for a, b in zip(nodes, nodes[1:]):
                use.setdefault(tuple(sorted((a, b))), []).append(client)
        return use


def _metro_ring(clients: int = 6) -> nx.Graph:
    g = nx.Graph()
    g.add_node(SERVER, kind="server")
    backbone_slots = max(2, clients // 3)
    for r, slots, coherence in (("r0", backbone_slots, 1.0), ("r1", clients, 0.1), ("r2", backbone_slots, 1.0),
                                ("r3", clients, 0.1)):
        g.add_node(r, kind="repeater", memory_slots=slots, coherence_time_s=coherence, swap_fidelity=0.99)
    for a, b in (("r0", "r1"), ("r1", "r2"), ("r2", "r3"), ("r3", "r0")):  # the metro ring
        g.add_edge(a, b, length_km=15.0, p_gen=0.5, link_fidelity=0.98, pair_rate_hz=30_000.0 * clients / 6)
    for r in ("r0", "r2"):  # the backbone: every client's pairs cross one of these two links
        g.add_edge(r, SERVER, length_km=10.0, p_gen=0.5, link_fidelity=0.99, pair_rate_hz=20_000.0 * clients / 6)
    for i in range(clients):
        client, near = f"c{i}", ("r1", "r3")[i % 2]
        g.add_node(client, kind="client")
        g.add_edge(client, near, length_km=5.0 + i % 6, p_gen=0.5, link_fidelity=0.97)
        g.add_edge(client, ("r0", "r2")[i % 2], length_km=25.0 + 2 * (i % 6), p_gen=0.4, link_fidelity=0.95)
    return g


def _star_overloaded(clients: int = 6, hub_slots: int = 2) -> nx.Graph:
    g = nx.Graph()
    g.add_node(SERVER, kind="server")
    g.add_node("hub", kind="repeater", memory_slots=hub_slots, coherence_time_s=1.0, swap_fidelity=0.99)
    for r in ("far-a", "far-b"):
        g.add_node(r, kind="repeater", memory_slots=clients, coherence_time_s=0.02, swap_fidelity=0.97)
        # each far repeater's way to the server is shared by the clients it serves
        g.add_edge(r, SERVER, length_km=40.0, p_gen=0.3, link_fidelity=0.95, pair_rate_hz=15_000.0 * clients / 6)
    g.add_edge("hub", SERVER, length_km=5.0, p_gen=0.5, link_fidelity=0.99, pair_rate_hz=20_000.0 * hub_slots / 2)
    for i in range(clients):
        client = f"c{i}"
        g.add_node(client, kind="client")
        g.add_edge(client, "hub", length_km=4.0 + 2 * (i % 6), p_gen=0.5, link_fidelity=0.98)
        g.add_edge(client, ("far-a", "far-b")[i % 2], length_km=10.0 + i % 6, p_gen=0.3, link_fidelity=0.93)
    return g


TOPOLOGIES: dict[str, Callable[..., nx.Graph]] = {"metro-ring": _metro_ring, "star-overloaded": _star_overloaded}


def load_topology(spec: str) -> QCNNetwork:
    """A named topology with optional integer overrides (``"star-overloaded:clients=12,hub_slots=3"``),
    or a JSON file of networkx's node-link data (``nx.node_link_data``)."""
    return _load(spec.strip())


@lru_cache(maxsize=16)
def _load(spec: str) -> QCNNetwork:
    name, _, overrides = spec.partition(":")
    if name in TOPOLOGIES:
        kwargs: dict[str, int] = {}
        for item in filter(None, (i.strip() for i in overrides.split(","))):
            key, sep, raw = item.partition("=")
            try:
                kwargs[key.strip().replace("-", "_")] = int(raw)
            except ValueError:
                raise ValueError(f"QCN topology {spec!r}: bad override {item!r} (key=integer)") from None
            if not sep or kwargs[key.strip().replace("-", "_")] < 1:
                raise ValueError(f"QCN topology {spec!r}: bad override {item!r} (key=integer >= 1)")
        try:
            return QCNNetwork(TOPOLOGIES[name](**kwargs))
        except TypeError as err:
            raise ValueError(f"QCN topology {spec!r}: {err}") from None
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"QCN topology {spec!r}: neither a name ({', '.join(TOPOLOGIES)}) nor a file")
    try:
        graph = nx.node_link_graph(json.loads(path.read_text()), edges="links")
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"QCN topology {spec!r}: not networkx node-link JSON: {err}") from err
    return QCNNetwork(graph)
