"""What a client does with a message: train or evaluate the global model on its partition.

A :class:`LocalTask` holds what one node needs for one model-defining configuration (its
data partition and its model on its simulated device); :func:`answer` turns a request into
a reply with it. Both the warm worker (:mod:`client.worker`) and the in-process path
(:mod:`client.runtime`) call :func:`answer`, so the numbers cannot differ: every message
reloads the parameters and reseeds every random draw from the seed, the round and the
partition, whatever the task did before.

Requests (:func:`client.runtime.request`) and replies are Flower ``RecordDict`` objects
(arrays and plain values only).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from client.circuits import choose_circuit, circuit_metrics, fit_to_circuit
from client.job import CLIENT_CONTROL, JOB, OPS, model_key
from qfl.common.config import KEY, REGRESSION, NodeConfig, RunConfig
from qfl.common.contract import (
    ARRAYS,
    CIRCUIT_DEPTH,
    CONFIG,
    CONTROL,
    CONTROL_DELTA,
    DEVICE,
    DEVICE_CIRCUIT,
    DEVICE_MITIGATION,
    DEVICE_NUM_PARTITIONS,
    DEVICE_PARTITION,
    DEVICE_PROFILE,
    DEVICE_ZNE,
    EVAL_ACCURACY,
    EVAL_LOSS,
    GATES,
    METRICS,
    NOISE_CONTRACTION,
    NOISE_GAP,
    NUM_EXAMPLES,
    PEC_GAMMA2,
    PROXIMAL_MU,
    ROUND_OFFSET,
    SERVER_ROUND,
    SWAPS,
    TRAIN_TIME_S,
    TWO_QUBIT_GATES,
    UPDATE_NOISE_VAR,
)
from qfl.task.build import build_dataset, build_model
from qfl.task.data import Dataset, load_partition, partition_indices
from qfl.task.local_data import node_dataset
from qfl.task.train import evaluate as evaluate_model
from qfl.task.noise_estimate import noise_contraction
from qfl.task.train import NOISE_REPLICAS, full_gradient, train_local

CACHE_SIZE = 8  # tasks one process keeps (the simulation engine runs many clients per worker)
DATA_CACHE_SIZE = 2  # data sets, and splits, one process keeps (its tasks share them)
# One thread for torch: a node's circuits are small, and several nodes (or a node and the
# server) share the machine's cores; more threads only fight over them. Same on every path,
# so the warm and cold paths add in the same order.
TORCH_THREADS = 1


class LocalTask:
    """One node's partition and model, for one model-defining configuration."""

    def __init__(self, cfg: RunConfig, node: NodeConfig, data: Dataset | None = None,
                 indices: np.ndarray | None = None) -> None:
        """``data`` and the partition's ``indices`` into its training split, where a
        :class:`TaskCache` shares them among its tasks; else built here."""
        import torch

        torch.set_num_threads(TORCH_THREADS)
        if cfg.dataset == "file":  # the node's own file: its training rows and its held-out rows
            data = node_dataset(cfg, node)
            self.x, self.y, self.x_eval, self.y_eval = data.x_train, data.y_train, data.x_test, data.y_test
        else:
            if data is None or indices is None:
                data = build_dataset(cfg)
                self.x, self.y = load_partition(data, node.partition_id, node.num_partitions, cfg.partitioner, cfg.seed,
                                                cfg.dirichlet_alpha)
            else:  # the partition's own rows (a copy of a few), not the data set
                self.x, self.y = data.x_train[indices], data.y_train[indices]
            held = evaluation_rows(len(data.y_test), node.partition_id, node.num_partitions, cfg.seed)
            self.x_eval, self.y_eval = data.x_test[held], data.y_test[held]
        self.spec, mitigation = node.device_for(cfg)
        self.node = node
        if node.device is not None:  # the node's own PennyLane device (a plugin's), for its circuits only
            cfg = RunConfig.from_run_config({**cfg.to_run_config(), KEY.device: node.simulator_for(cfg)})
        # this node's own circuit (architecture by-device or search), or the run's
        self.circuit, self.qas_score = choose_circuit(cfg, self.spec, self.x, self.y, data.n_classes, data.kind)
        self.model = build_model(cfg, data, self.spec, mitigation, circuit=self.circuit)

    def warm_up(self) -> None:
        """One forward and backward pass on two samples, thrown away: the first pass of a
        process pays for lazy set-up (autograd, the circuit's construction). Every message
        reloads the parameters and reseeds every draw, so this changes no result."""
        import torch

        out = self.model(torch.as_tensor(self.x[:2]))
        out.sum().backward()
        self.model.zero_grad(set_to_none=True)

    def _prepare(self, cfg: RunConfig, arrays: ArrayRecord, server_round: int) -> None:
        # noise draws differ per client and round, and are reproducible
        self.model.reseed_noise(cfg.seed * 7919 + server_round * 104_729 + self.node.partition_id)
        # a node on fewer layers than the global model keeps the first ones (strategies.nested_fedavg)
        self.model.load_state_dict(fit_to_circuit(arrays.to_torch_state_dict(), self.model), strict=True)

    def train(self, cfg: RunConfig, req: RecordDict, server_round: int) -> RecordDict:
        """Train the global model on the partition (on this node's simulated device); the new
        parameters, train metrics and noise-capturing metrics.

        The server's message may turn on corrections of client drift, whatever its strategy:
        ``proximal-mu`` in its config (FedProx), a ``control`` variate (SCAFFOLD: the reply
        then carries ``control-delta``, and this client's own variate comes back as
        :data:`~client.job.CLIENT_CONTROL` for the ClientApp to keep in its node's state).
        """
        self._prepare(cfg, req[ARRAYS], server_round)
        mu = float(req[CONFIG].get(PROXIMAL_MU, 0.0))
        control = req.array_records.get(CONTROL)
        correction, new_control = None, None
        if control is not None:
            own = req.array_records.get(CLIENT_CONTROL)
            server_c = control.to_torch_state_dict()
            client_c = own.to_torch_state_dict() if own is not None else {n: 0.0 * v for n, v in server_c.items()}
            correction = {n: server_c[n] - client_c[n] for n in server_c}
            # option I of the paper: c_i+ = the full local gradient at the global model
            new_control = full_gradient(self.model, self.x, self.y, cfg.task_kind == REGRESSION)
        import torch

        # of the circuit at the parameters received, before training (nothing of the data in it)
        circuit = circuit_metrics(cfg, self.model, torch.as_tensor(self.x[:1]), self.qas_score)
        start = time.perf_counter()
        metrics = train_local(self.model, self.x, self.y, epochs=cfg.local_epochs, batch_size=cfg.batch_size,
                              learning_rate=cfg.learning_rate,
                              # a different, reproducible shuffle per client and round
                              seed=cfg.seed * 1_000_003 + server_round * 1009 + self.node.partition_id,
                              proximal_mu=mu, correction=correction,
                              # replicas on the broadcast axis measure the update's device noise;
                              # a noiseless device's update is deterministic: variance 0, no replicas,
                              # and so is a device simulated exactly (a user's model, qfl.task.user_noise)
                              noise_replicas=NOISE_REPLICAS if self.model.is_noisy and hasattr(self.model, "replica_logits")
                              else 1,
                              optimizer=cfg.optimizer, qng_lam=cfg.qng_lam, regression=cfg.task_kind == REGRESSION)
        metrics.setdefault(UPDATE_NOISE_VAR, 0.0)
        train_time = time.perf_counter() - start
        metrics.update(noise_metrics(cfg, self.model, self.x, self.y))
        metrics.update(circuit)
        metrics.update({TRAIN_TIME_S: train_time, NUM_EXAMPLES: len(self.y)})
        reply = RecordDict({
            ARRAYS: ArrayRecord(self.model.state_dict()),
            METRICS: MetricRecord(metrics),
            # what the server logs per client (strings do not fit a MetricRecord)
            DEVICE: ConfigRecord({DEVICE_PROFILE: self.spec, DEVICE_ZNE: self.model.zne,
                                  DEVICE_MITIGATION: self.model.mitigation, DEVICE_PARTITION: self.node.partition_id,
                                  DEVICE_NUM_PARTITIONS: self.node.num_partitions,
                                  DEVICE_CIRCUIT: self.circuit_label()}),
        })
        if new_control is not None:
            reply[CONTROL_DELTA] = ArrayRecord({n: Array((new_control[n] - client_c[n]).numpy()) for n in new_control})
            reply[CLIENT_CONTROL] = ArrayRecord({n: Array(v.numpy()) for n, v in new_control.items()})
        return reply

    def circuit_label(self) -> str:
        """The circuit this node runs (:meth:`~qfl.task.architecture.CircuitSpec.label`); '' for a classical model."""
        from qfl.task.model import PQCClassifier

        return self.model.circuit.label() if isinstance(self.model, PQCClassifier) else ""

    def evaluate(self, cfg: RunConfig, arrays: ArrayRecord, server_round: int) -> RecordDict:
        """Loss and accuracy of the global model on this node's held-out rows, on its device:
        with ``dataset = "file"`` its own file's held-out share, else its share of the data
        set's test split (:func:`evaluation_rows`)."""
        self._prepare(cfg, arrays, server_round)
        metrics = evaluate_model(self.model, self.x_eval, self.y_eval, regression=cfg.task_kind == REGRESSION)
        return RecordDict({METRICS: MetricRecord({EVAL_LOSS: metrics["loss"], EVAL_ACCURACY: metrics["accuracy"],
                                                  NUM_EXAMPLES: len(self.y_eval)})})


def evaluation_rows(n_test: int, partition_id: int, num_partitions: int, seed: int) -> np.ndarray:
    """The rows of a built-in data set's test split that partition ``partition_id`` evaluates on:
    a seeded shuffle cut into ``num_partitions`` near-equal parts (the whole split where there are
    more partitions than test rows)."""
    if num_partitions > n_test:
        return np.arange(n_test)
    order = np.random.default_rng([seed, num_partitions, 0x7E57]).permutation(n_test)
    return np.sort(np.array_split(order, num_partitions)[partition_id])


def noise_metrics(cfg: RunConfig, model, x, y) -> dict[str, float]:  # noqa: ANN001
    """Hardware and noise-capturing metrics of a trained model on its device.

    ``noise-gap``: noiseless minus noisy accuracy (regression: :math:`R^2`) of the same parameters
    on the local data (the accuracy the device's noise costs); ``circuit-depth``, ``gates``,
    ``two-qubit-gates`` and ``swaps`` of the circuit as routed to the device's coupling map;
    ``noise-contraction`` (:func:`qfl.task.noise_estimate.noise_contraction`: one broadcast
    execution of 256 device circuits without gradient) and ``pec-gamma2`` (analytic).
    ``update-noise-var`` comes from training (:func:`qfl.task.train.train_local`).
    """
    import torch

    from qfl.task.model import PQCClassifier
    from qfl.task.user_model import UserModel

    regression = cfg.task_kind == REGRESSION
    if isinstance(model, UserModel):  # the user's circuit on its device (qfl.task.user_noise), or ideal
        from qfl.task.user_noise import user_noise_metrics

        return user_noise_metrics(model, x, y, regression)
    if not isinstance(model, PQCClassifier):  # the classical baseline: no circuit, no device
        return {CIRCUIT_DEPTH: 0.0, GATES: 0.0, TWO_QUBIT_GATES: 0.0, SWAPS: 0.0, NOISE_GAP: 0.0,
                NOISE_CONTRACTION: 1.0, PEC_GAMMA2: 1.0}
    xt = torch.as_tensor(x)
    out: dict[str, float] = {k: float(v) for k, v in model.routed_metrics(xt).items()}
    out[PEC_GAMMA2] = model.pec_gamma2(xt)
    out[NOISE_CONTRACTION] = noise_contraction(model, xt)
    if model.profile is None or model.profile.is_noiseless:
        out[NOISE_GAP] = 0.0
        return out
    ideal = PQCClassifier(model.n_qubits, model.n_layers, model.n_classes, kind=model.kind, seed=cfg.seed,
                          embedding=model.embedding_kind, circuit=model.circuit)
    ideal.load_state_dict(model.state_dict())
    out[NOISE_GAP] = (evaluate_model(ideal, x, y, regression=regression)["accuracy"]
                      - evaluate_model(model, x, y, regression=regression)["accuracy"])
    return out


class TaskCache:
    """The :class:`LocalTask` of each model key, the least recently used dropped first; and,
    shared by its tasks, the data sets they were cut from and each data set's split.

    On the simulation engine one process (a Ray actor) serves thousands of clients in turn:
    the cache holds at most ``size`` tasks (each its partition's rows and its model), and at
    most ``data_size`` data sets and splits, whatever the number of clients. A new client's
    task takes its rows from the shared split instead of loading the data set and splitting
    it again (at 10,000 partitions that was half a client's time).
    """

    def __init__(self, size: int = CACHE_SIZE, data_size: int = DATA_CACHE_SIZE) -> None:
        self.size, self.data_size = size, data_size
        self._tasks: OrderedDict[str, LocalTask] = OrderedDict()
        self._data: OrderedDict[tuple, Dataset] = OrderedDict()
        self._splits: OrderedDict[tuple, list[np.ndarray]] = OrderedDict()

    def sizes(self) -> tuple[int, int, int]:
        """How many tasks, data sets and splits the cache holds."""
        return len(self._tasks), len(self._data), len(self._splits)

    def get(self, cfg: RunConfig, node: NodeConfig) -> LocalTask:
        key = model_key(cfg, node) + circuit_key(cfg)
        if key in self._tasks:
            self._tasks.move_to_end(key)
        elif cfg.dataset == "file":  # the node's own file: nothing to share with other tasks
            self._tasks[key] = LocalTask(cfg, node)
            while len(self._tasks) > self.size:
                self._tasks.popitem(last=False)
        else:
            data, data_key = self._dataset(cfg)
            split_key = (data_key, node.num_partitions, cfg.partitioner, cfg.seed, cfg.dirichlet_alpha)
            parts = _lru(self._splits, split_key, self.data_size, lambda: partition_indices(
                data.y_train, node.num_partitions, cfg.partitioner, cfg.seed, cfg.dirichlet_alpha, data.h_train))
            self._tasks[key] = LocalTask(cfg, node, data, parts[node.partition_id])
            while len(self._tasks) > self.size:
                self._tasks.popitem(last=False)
        return self._tasks[key]

    def _dataset(self, cfg: RunConfig) -> tuple[Dataset, tuple]:
        # what build_dataset reads of the run config
        key = (cfg.dataset, cfg.n_qubits, cfg.seed, cfg.test_fraction, cfg.tfim_samples, cfg.validation_fraction)
        return _lru(self._data, key, self.data_size, lambda: build_dataset(cfg)), key


def circuit_key(cfg: RunConfig) -> str:
    """What decides a node's own circuit besides :func:`client.job.model_key` (the search
    scores circuits with the run's batch size and learning rate)."""
    run = cfg.to_run_config()
    keys = (KEY.architecture, KEY.min_fidelity, KEY.qas_space, KEY.qas_trials, KEY.qas_epochs, KEY.batch_size,
            KEY.learning_rate)
    return json.dumps({k: run[k] for k in keys}, sort_keys=True) if cfg.architecture != "fixed" else ""


def _lru(cache: OrderedDict, key: tuple, size: int, make):  # noqa: ANN001, ANN202
    """``cache[key]``, made by ``make()`` if missing; the least recently used dropped beyond ``size``."""
    if key in cache:
        cache.move_to_end(key)
    else:
        cache[key] = make()
        while len(cache) > size:
            cache.popitem(last=False)
    return cache[key]


def answer(req: RecordDict, tasks: TaskCache | None = None) -> RecordDict:
    """The reply content for a request (:func:`request`); ``tasks=None`` builds a fresh task."""
    job = req.config_records[JOB]
    op = job["op"]
    if op not in OPS:
        raise ValueError(f"unknown operation {op!r}")
    cfg = RunConfig.from_run_config(json.loads(str(job["run-config"])))
    node = NodeConfig.from_node_config(json.loads(str(job["node-config"])))
    task = tasks.get(cfg, node) if tasks is not None else LocalTask(cfg, node)
    if op == "prepare":
        task.warm_up()
        return RecordDict()
    config = req.config_records[CONFIG]
    # the round number of the whole run, also after the server resumed a checkpoint
    server_round = int(config[SERVER_ROUND]) + int(config[ROUND_OFFSET])
    if op == "train":
        return task.train(cfg, req, server_round)
    return task.evaluate(cfg, req.array_records[ARRAYS], server_round)
