"""The models a membership audit attacks: federations trained the way the project trains them.

Every model, target or shadow, is a real in-process federation
(:class:`qfl.inprocess.InProcessFederation`: the real ClientApp with its transport mod, the real
strategy chain behind the server's guard) whose nodes each read their own file
(``dataset = "file"``, the node config's ``data-path``) and whose messages go through the
server's real :class:`~transport.flower.TransportGrid`, so local DP is the nodes' own
:class:`~transport.dp.LocalDPTransport`, central DP the server's
:class:`~strategies.central_dp.CentralDPFixedClipping`, distributed DP (``secagg+dp`` with
``dp-mode = "central"``) the nodes' own :class:`~transport.secagg_flower.SecAggTransport`
(each clips its update and adds its share of the noise) under the server's real
:class:`~transport.secagg_flower.SecAggGrid` (keys, masked inputs, consistency, unmask, the
sum's bound check), and epsilon the project's ledgers (:class:`~transport.dp.LocalDPLedger`,
:class:`~transport.dp.CentralDPLedger`), so that a bug in any of them shows in the audit.

The data: a *pool* of ``N`` examples (a built-in data set's training and test splits,
prepared as angles); each example belongs to one client for good (a seeded assignment), and
each model trains on a random half (an independent fair coin per example and model). Adding or
removing one example therefore changes one client's data only: the neighbours client-level
DP accounts for. A node holds out ``test-fraction`` of its rows for federated evaluation
(at least one, :func:`qfl.task.local_data.held_out`); those did not train the model and count
as non-members.

Secure aggregation runs its real protocol here, in process: each node's identity is
certified by a CA made for the federation (:func:`secagg_identities`, as ``qfl.pki`` makes a
deployment's), the masks are real and cancel in the sum; what the server receives each round
is the one aggregate :class:`~transport.secagg_flower.SecAggGrid` unmasks (the noised sum of
the sampled clients' releases over their number), never one client's update.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qfl.common.config import KEY, RunConfig
from qfl.common.contract import (
    ARRAYS,
    METRICS,
    NODE_DP_LEDGER,
    NODE_NUM_PARTITIONS,
    NODE_PARTITION_ID,
    NUM_EXAMPLES,
    ROUND_CLIENTS_FAILED,
    ROUND_CLIENTS_REJECTED,
    ROUND_OFFSET,
    SECAGG_DROPPED,
    SECAGG_SUMMED,
)
from qfl.inprocess import InProcessFederation, stamp
from qfl.task.local_data import held_out

LABEL = "label"
FEATURES = "x"  # the NPZ's feature matrix: columns x[0] .. x[n-1]
HELD_OUT_FRACTION = 0.01  # each node keeps one row back for federated evaluation (the least the data path allows)


@dataclass(frozen=True)
class Pool:
    """The examples an audit draws its training halves from, and the client each belongs to.

    Attributes
    ----------
    x : np.ndarray
        ``(N, n_qubits)`` angles, as the data path prepares them.
    y : np.ndarray
        ``(N,)`` labels.
    client : np.ndarray
        ``(N,)`` the partition each example belongs to (balanced, seeded).
    n_classes : int
    """

    x: np.ndarray
    y: np.ndarray
    client: np.ndarray
    n_classes: int

    @classmethod
    def of_dataset(cls, name: str, n_qubits: int, clients: int, seed: int) -> Pool:
        """A built-in data set's training and test splits together (its seeded preparation:
        PCA to ``n_qubits`` angles), each example given to a client by a seeded shuffle."""
        from qfl.task.data import load_dataset

        data = load_dataset(name, n_qubits, seed)
        if data.kind != "angles":
            raise ValueError(f"the audit pool takes angle data; {name!r} is loaded as {data.kind}")
        x = np.concatenate([data.x_train, data.x_test])
        y = np.concatenate([data.y_train, data.y_test])
        order = np.random.default_rng([seed, 0xA0D1]).permutation(len(y))
        client = np.empty(len(y), dtype=np.int64)
        client[order] = np.arange(len(y)) % clients
        return cls(x, y, client, data.n_classes)

    @property
    def clients(self) -> int:
        return int(self.client.max()) + 1


def draw_membership(models: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``(models, size)`` independent fair coins: which examples each model may train on."""
    return rng.random((models, size)) < 0.5


@dataclass
class TrainedModel:
    """One federation's released models, and which pool examples really trained it.

    Attributes
    ----------
    trained : np.ndarray
        ``(N,)`` bool: the example was in its client's file and not held out.
    global_state : dict
        The final global model's parameters (what an outsider holds).
    client_states : list of list of dict
        ``[round][client]`` each client's model as the server received it (after the
        transports: noised under local DP); under secure aggregation ``[round][0]``, the one
        aggregate the server unmasked (the global model before its strategy averages the
        single reply: the previous model plus the noised sum over the number sampled).
    epsilon : float
        The accountant's epsilon for this model's release (``inf`` without DP).
    server_epsilon : float
        The epsilon that bounds what the server sees (local DP's; distributed DP's ledger,
        whose releases are the very sums the server unmasks; ``inf`` otherwise).
    rejected : int
        Replies the server's guard refused (all rounds); the server saw them all the same.
    aggregate_only : bool
        The server saw each round's aggregate only (secure aggregation), not each client's reply.
    """

    trained: np.ndarray
    global_state: dict
    client_states: list[list[dict]] = field(default_factory=list)
    epsilon: float = float("inf")
    server_epsilon: float = float("inf")
    rejected: int = 0
    aggregate_only: bool = False


class _Loopback:
    """The grid below the server's transports: each message to its node's ClientApp, in this process."""

    def __init__(self, fed: AuditFederation) -> None:
        self.fed = fed
        self.sent = 0

    def get_node_ids(self) -> list[int]:
        return self.fed.get_node_ids()

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ANN201 (Flower's Grid signature)
        from flwr.app import Context

        from client.app import app

        replies = []
        for msg in messages:
            self.sent += 1
            stamp(msg, message_id=f"audit-{self.sent}")
            node = msg.metadata.dst_node_id
            ctx = Context(run_id=1, node_id=node, node_config=self.fed.node_configs[node], state=self.fed.states[node],
                          run_config=self.fed.run_config)
            replies.append(app(msg, ctx))
        return replies


class AuditFederation(InProcessFederation):
    """An :class:`~qfl.inprocess.InProcessFederation` whose nodes read their own files and whose
    messages pass the server's transports (:class:`~transport.flower.TransportGrid`); it keeps
    what the server received from each client, and the run's privacy ledger.

    Parameters
    ----------
    run_config : dict
        A full run config with ``dataset = "file"``.
    files : list of Path
        Node ``k``'s own data file (partition ``k``).
    ledger_dir : Path
        Where the nodes keep their privacy ledgers (local DP), apart from the user's.

    Under secure aggregation (``secagg`` in ``transport``) the nodes need their certified
    identities and a private directory: build and run it inside :func:`secagg_identities`.
    """

    def __init__(self, run_config: dict, files: list[Path], ledger_dir: Path) -> None:
        from transport.dp import CentralDPLedger, LocalDPLedger
        from transport.flower import TransportGrid
        from transport.registry import build_transport
        from transport.secagg_flower import SecAggGrid

        clients = len(files)
        self.node_configs = {k + 1: {NODE_PARTITION_ID: k, NODE_NUM_PARTITIONS: clients, KEY.data_path: str(f),
                                     NODE_DP_LEDGER: str(Path(ledger_dir) / f"ledger-{k}.json")}
                             for k, f in enumerate(files)}
        super().__init__(run_config, clients)
        cfg = self.cfg
        self._round_now = 0
        stack = build_transport(cfg, None)
        # the guard as the ServerApp builds it for this run (server.app): the reply schema of the run's
        # transports (local DP withholds the data-dependent metrics), no partition sizes for the nodes' files
        from server.chain import server_strategy
        from server.instrumented import train_reply_schema
        from strategies.validation import ReplySchema

        _, _, reply_arrays = server_strategy(cfg)
        if cfg.uses_transport("secagg"):  # as server.app: one reply, the aggregate, nothing per client to check
            self.guard.schema = ReplySchema(metrics=frozenset((NUM_EXAMPLES, SECAGG_SUMMED, SECAGG_DROPPED)))
        else:
            self.guard.schema = train_reply_schema(stack.reply_metrics, stack.reply_configs, reply_arrays,
                                                   stack.withheld_metrics)
        self.guard.examples_bounds = None
        # as the ServerApp does: the transports' grid only where the run has transports
        self.wire = TransportGrid(_Loopback(self), stack, 1, lambda: self._round_now) if stack.transports else _Loopback(self)
        # and secure aggregation above it (strategy -> secure aggregation -> transport -> wire); with the nodes'
        # own files the server knows no partition's size: weight bound 1, as server.app (unused under DP)
        self.secagg = SecAggGrid(self.wire, cfg, weight_bound=1.0) if cfg.uses_transport("secagg") else None
        if self.secagg is not None:
            self.wire = self.secagg
        self.ledger = None
        if cfg.uses_transport("dp"):
            kind = LocalDPLedger if cfg.dp_mode == "local" and not cfg.uses_transport("secagg") else CentralDPLedger
            self.ledger = kind(cfg.dp_noise_multiplier, cfg.dp_delta, cfg.dp_accountant)
        self.received: list[list[dict]] = []

    def evaluate(self) -> float:
        """No central test set with the nodes' own files: the audit measures accuracy itself."""
        return float("nan")

    def round(self, rnd: int) -> None:
        from flwr.app import ConfigRecord

        from strategies.central_dp import CentralDPFixedClipping
        from transport.dp import LocalDPLedger

        self._round_now = rnd
        requests = list(self.guard.configure_train(rnd, self.arrays, ConfigRecord({ROUND_OFFSET: 0}), self))
        replies = list(self.wire.send_and_receive(requests))
        sound = sorted((r for r in replies if not r.has_error()), key=lambda r: r.metadata.src_node_id)
        if self.secagg is not None:  # the one aggregate must sum every node sampled: none dropped, none refused
            failures = self.secagg.take_failures()
            if failures:  # a round not unmasked: the audit's set-up is wrong, not the federation
                raise RuntimeError(f"secure aggregation failed in an audited federation: {failures}")
            summed = [int(r.content.metric_records[METRICS][SECAGG_SUMMED]) for r in sound]
            if summed != [len(requests)]:
                raise RuntimeError(f"an audited secure-aggregation round summed {summed} of {len(requests)} nodes")
        self.received.append([{n: a.numpy().copy() for n, a in r.content.array_records[ARRAYS].items()} for r in sound])
        if isinstance(self.ledger, LocalDPLedger):
            self.ledger.record([f"partition-{r.metadata.src_node_id - 1}" for r in sound])
        central = self.guard.strategy
        new, _ = self.guard.aggregate_train(rnd, replies)
        if isinstance(central, CentralDPFixedClipping) and central.last_sample is not None and self.ledger is not None:
            self.ledger.record(*central.last_sample)
            central.last_sample = None
        if self.secagg is not None:  # distributed DP: the rounds' samples are secure aggregation's (server.app)
            if self.secagg.last_sample is not None and self.ledger is not None:
                self.ledger.record(*self.secagg.last_sample)
                self.secagg.last_sample = None
        self.arrays = new if new is not None else self.arrays
        self.stats.append(self.guard.take_round_stats())
        self.rows += self.guard.take_client_rows()
        self.accuracy.append(self.evaluate())

    @property
    def epsilon(self) -> float:
        """The accountant's epsilon so far (the worst client's under local DP); ``inf`` without DP."""
        from transport.dp import LocalDPLedger

        if self.ledger is None:
            return float("inf")
        return self.ledger.worst() if isinstance(self.ledger, LocalDPLedger) else self.ledger.epsilon


def audit_run_config(base: dict, pool: Pool, seed: int, overrides: dict) -> dict:
    """The run config of one audited federation: ``base`` (the app's defaults) with the nodes'
    own files (angles as prepared, one row held out per node), its ``seed`` and ``overrides``."""
    return {**base, KEY.dataset: "file", KEY.data_path: "", KEY.data_num_features: pool.x.shape[1],
            KEY.data_classes: ",".join(str(c) for c in range(pool.n_classes)), KEY.data_label: LABEL,
            KEY.data_features: "", KEY.data_reduction: "none", KEY.test_fraction: HELD_OUT_FRACTION,
            KEY.fraction_evaluate: 1.0, KEY.fraction_train: 1.0, KEY.seed: seed, **overrides}


def write_node_files(pool: Pool, keep: np.ndarray, run_config: dict, directory: Path) -> tuple[list[Path], np.ndarray]:
    """Write node ``k``'s own file (its pool examples that ``keep`` selects, in pool order) into
    ``directory``; return the files and ``(N,)`` which examples the nodes train on: each node's
    file less the rows it holds out (:func:`~qfl.task.local_data.held_out`, as
    :func:`~qfl.task.local_data.node_dataset` splits it)."""
    cfg = RunConfig.from_run_config(run_config)
    trained = np.zeros(len(pool.y), dtype=bool)
    files = []
    for k in range(pool.clients):
        rows = np.flatnonzero(keep & (pool.client == k))
        path = Path(directory) / f"node-{k}.npz"
        np.savez(path, **{FEATURES: pool.x[rows], LABEL: pool.y[rows]})
        files.append(path)
        train, _ = held_out(len(rows), cfg.test_fraction, cfg.seed * 1_000_003 + k)
        trained[rows[train]] = True
    return files, trained


@contextmanager
def secagg_identities(clients: int, directory: Path) -> Iterator[Path]:
    """What the nodes' secure aggregation needs, made as a deployment makes it: a CA and the
    certified identities ``node-0`` .. ``node-<clients - 1>`` (``qfl.pki``) in ``directory``,
    found through ``$QFL_SECAGG_CERTS``, and a private directory of this federation's own for
    the nodes' secrets (``$QFL_RUNTIME_DIR``, mode 0700: a fresh one, so that no store of an
    earlier federation with the same run and node IDs is read). The environment is restored
    on exit. Yields the certificates' folder."""
    from qfl.common.private import RUNTIME_DIR_ENV
    from qfl.pki import generate
    from transport.secagg_identity import CERTS_ENV, node_name

    certs, runtime = Path(directory) / "certs", Path(directory) / "runtime"
    generate(certs, nodes=0, identities=[node_name(k) for k in range(clients)])
    runtime.mkdir(mode=0o700)
    runtime.chmod(0o700)
    saved = {k: os.environ.get(k) for k in (CERTS_ENV, RUNTIME_DIR_ENV)}
    os.environ.update({CERTS_ENV: str(certs), RUNTIME_DIR_ENV: str(runtime)})
    try:
        yield certs
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def train_model(pool: Pool, keep: np.ndarray, run_config: dict, rounds: int) -> TrainedModel:
    """Train one federation on the pool examples ``keep`` (each in its own client's file) and
    return what it released. Call inside :func:`qfl.inprocess.task_identity`."""
    from transport.dp import LocalDPLedger

    secure = RunConfig.from_run_config(run_config).uses_transport("secagg")
    with tempfile.TemporaryDirectory(prefix="qfl-audit-") as tmp:
        files, trained = write_node_files(pool, keep, run_config, Path(tmp))
        quiet = logging.getLogger("flwr")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            with secagg_identities(pool.clients, Path(tmp)) if secure else nullcontext():
                fed = AuditFederation(run_config, files, Path(tmp)).run(rounds)
        finally:
            quiet.setLevel(level)
    failed = [s for s in fed.stats if s.get(ROUND_CLIENTS_FAILED)]
    if failed:  # a reply that did not come back: the audit's set-up is wrong, not the federation
        raise RuntimeError(f"an audited federation lost clients: {failed}")
    # a reply the guard refused is the server's real behaviour (it still left the node): counted, kept
    # the server's epsilon: local DP's; under distributed DP the ledger's, which counts the very sums it unmasks
    bounded = isinstance(fed.ledger, LocalDPLedger) or (secure and fed.ledger is not None)
    rejected = sum(int(s.get(ROUND_CLIENTS_REJECTED, 0)) for s in fed.stats)
    return TrainedModel(trained, {n: a.numpy().copy() for n, a in fed.arrays.items()}, fed.received, fed.epsilon,
                        fed.epsilon if bounded else float("inf"), rejected, aggregate_only=secure)


def model_logits(pool: Pool, run_config: dict, states: list[dict]) -> np.ndarray:
    """``(len(states), N, C)`` logits of each parameter set on every pool example, evaluated
    exactly (an ideal simulator: the attacker holds the parameters, not the device)."""
    import torch

    from qfl.task.model import PQCClassifier

    cfg = RunConfig.from_run_config(run_config)
    model = PQCClassifier(cfg.n_qubits, cfg.n_layers, pool.n_classes, seed=cfg.seed, embedding=cfg.embedding)
    x = torch.as_tensor(pool.x)
    out = []
    with torch.no_grad():
        for state in states:
            model.load_state_dict({n: torch.as_tensor(v) for n, v in state.items()}, strict=True)
            out.append(model(x).numpy())
    return np.stack(out)
