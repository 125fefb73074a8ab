"""A shared quantum network: repeaters and links that the clients' paths have in common.

A :class:`QCNNetwork` is a networkx graph. Nodes are ``"server"``, clients and repeaters;
a repeater has ``memory_slots`` (how many clients it can hold pairs for at once) and a
memory ``coherence_time_s``; every link has its ``length_km``, ``p_gen`` (success of one
generation attempt before fibre loss) and ``link_fidelity``. A client reaches the server
through one repeater it is associated with (:mod:`transport.matching` decides which); the
route is the shortest client -> repeater -> server path, and :meth:`QCNNetwork.path`
turns it into the single-path model of :mod:`transport.qcn` (a :class:`~transport.qcn.QCNPath`),
whose physics is reused as it is: total length, the repeaters on the route as hops, the
weakest link's generation probability and fidelity, the shortest coherence time.

Named topologies (:data:`TOPOLOGIES`), or a user's own from a JSON file in networkx's
node-link format (:func:`load_topology`):

- ``metro-ring``: six clients on a ring of four metro repeaters, two of which hold the
  backbone to the server; the backbone repeaters are each client's nearest way out, and
  their memories are scarce (2 slots each);
- ``star-overloaded``: six clients around one central repeater with 2 memory slots (the
  bottleneck) and two far, poorer repeaters with room to spare.

Physical parameters follow :data:`transport.qcn.PATHS` (metro-scale links: 0.2 dB/km fibre,
p_gen 0.3-0.5, link fidelities 0.93-0.99, memories of 4 ms to 1 s, as reported for
trapped-ion, NV and atomic-ensemble repeater nodes).
"""

from __future__ import annotations

import json
from collections.abc import Callable
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

    @property
    def clients(self) -> list[str]:
        return sorted(n for n, d in self.graph.nodes(data=True) if d["kind"] == "client")

    @property
    def repeaters(self) -> list[str]:
        return sorted(n for n, d in self.graph.nodes(data=True) if d["kind"] == "repeater")

    def capacity(self, repeater: str) -> int:
        return int(self.graph.nodes[repeater]["memory_slots"])

    def route(self, client: str, repeater: str) -> list[str]:
        """The shortest client -> repeater -> server route (by length), through no other client."""
        others = {c for c in self.clients if c != client}
        to_repeater = nx.subgraph_view(self.graph, filter_node=lambda n: n not in others)
        to_server = nx.subgraph_view(self.graph, filter_node=lambda n: n not in others and n != client)
        first = nx.shortest_path(to_repeater, client, repeater, weight="length_km")
        second = nx.shortest_path(to_server, repeater, SERVER, weight="length_km")
        return first + second[1:]

    def path(self, client: str, repeater: str, cutoff_s: float | None = None, distillation_rounds: int = 0) -> QCNPath:
        """The route as :class:`~transport.qcn.QCNPath` (the single-path physics reused)."""
        nodes = self.route(client, repeater)
        links = [self.graph.edges[a, b] for a, b in zip(nodes, nodes[1:])]
        relays = [self.graph.nodes[n] for n in nodes if self.graph.nodes[n]["kind"] == "repeater"]
        coherence = min(r["coherence_time_s"] for r in relays)
        return QCNPath(
            distance_km=sum(e["length_km"] for e in links), hops=len(relays),
            p_gen=min(e["p_gen"] for e in links), link_fidelity=min(e["link_fidelity"] for e in links),
            coherence_time_s=coherence, cutoff_s=cutoff_s if cutoff_s is not None else coherence / 2,
            swap_fidelity=min(r.get("swap_fidelity", 0.99) for r in relays), distillation_rounds=distillation_rounds,
        )

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


def _metro_ring() -> nx.Graph:
    g = nx.Graph()
    g.add_node(SERVER, kind="server")
    for r, slots, coherence in (("r0", 2, 1.0), ("r1", 4, 0.1), ("r2", 2, 1.0), ("r3", 4, 0.1)):
        g.add_node(r, kind="repeater", memory_slots=slots, coherence_time_s=coherence, swap_fidelity=0.99)
    for a, b in (("r0", "r1"), ("r1", "r2"), ("r2", "r3"), ("r3", "r0")):  # the metro ring
        g.add_edge(a, b, length_km=15.0, p_gen=0.5, link_fidelity=0.98)
    for r in ("r0", "r2"):  # the backbone
        g.add_edge(r, SERVER, length_km=10.0, p_gen=0.5, link_fidelity=0.99)
    for i in range(6):
        client, near = f"c{i}", ("r1", "r3")[i % 2]
        g.add_node(client, kind="client")
        g.add_edge(client, near, length_km=5.0 + i, p_gen=0.5, link_fidelity=0.97)
        g.add_edge(client, ("r0", "r2")[i % 2], length_km=25.0 + 2 * i, p_gen=0.4, link_fidelity=0.95)
    return g


def _star_overloaded() -> nx.Graph:
    g = nx.Graph()
    g.add_node(SERVER, kind="server")
    g.add_node("hub", kind="repeater", memory_slots=2, coherence_time_s=1.0, swap_fidelity=0.99)
    for r in ("far-a", "far-b"):
        g.add_node(r, kind="repeater", memory_slots=6, coherence_time_s=0.02, swap_fidelity=0.97)
        g.add_edge(r, SERVER, length_km=40.0, p_gen=0.3, link_fidelity=0.95)
    g.add_edge("hub", SERVER, length_km=5.0, p_gen=0.5, link_fidelity=0.99)
    for i in range(6):
        client = f"c{i}"
        g.add_node(client, kind="client")
        g.add_edge(client, "hub", length_km=4.0 + 2 * i, p_gen=0.5, link_fidelity=0.98)
        g.add_edge(client, ("far-a", "far-b")[i % 2], length_km=10.0 + i, p_gen=0.3, link_fidelity=0.93)
    return g


TOPOLOGIES: dict[str, Callable[[], nx.Graph]] = {"metro-ring": _metro_ring, "star-overloaded": _star_overloaded}


def load_topology(spec: str) -> QCNNetwork:
    """A named topology, or a JSON file of networkx's node-link data (``nx.node_link_data``)."""
    if spec in TOPOLOGIES:
        return QCNNetwork(TOPOLOGIES[spec]())
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"QCN topology {spec!r}: neither a name ({', '.join(TOPOLOGIES)}) nor a file")
    try:
        graph = nx.node_link_graph(json.loads(path.read_text()), edges="links")
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"QCN topology {spec!r}: not networkx node-link JSON: {err}") from err
    return QCNNetwork(graph)
