"""The Flower ClientApp: local PQC training and evaluation on this node's partition.

Each SuperNode names its partition with ``--node-config 'partition-id=I num-partitions=N'``
(Flower's simulation engine sets both). Every message starts a fresh process, so the
data come from the on-disk cache (:mod:`client.data`) and nothing else is loaded.
"""

from __future__ import annotations

import time

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.config import RunConfig, node_partition
from client.data import load_partition
from client.task import build_dataset, build_model
from client.train import evaluate as evaluate_model
from client.train import train_local
from transport.flower import HELLO_ACTION, answer_hello, transport_mod

# The transport mod decodes what arrives and encodes the reply (run config `transport`).
app = ClientApp(mods=[transport_mod])
# the server asks a node which SAE it is once per run (transports that identify ends)
app.query(HELLO_ACTION)(answer_hello)


def _setup(msg: Message, context: Context):
    cfg = RunConfig.from_run_config(context.run_config)
    pid, num = node_partition(context.node_config)
    spec, zne = cfg.device_for(pid, context.node_config)
    config = msg.content["config"]
    # the round number of the whole run, also after the server resumed a checkpoint
    server_round = int(config["server-round"]) + int(config["round-offset"])
    data = build_dataset(cfg)
    x, y = load_partition(data, pid, num, cfg.partitioner, cfg.seed, cfg.dirichlet_alpha)
    # noise draws differ per client and round, and are reproducible
    model = build_model(cfg, data, spec, zne, seed=cfg.seed * 7919 + server_round * 104_729 + pid)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict(), strict=True)
    return cfg, pid, spec, model, x, y, server_round


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on the local partition (on this node's simulated
    device); reply with the new parameters, train metrics and noise-capturing metrics."""
    cfg, pid, spec, model, x, y, server_round = _setup(msg, context)
    start = time.perf_counter()
    metrics = train_local(
        model,
        x,
        y,
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        # a different, reproducible shuffle per client and round
        seed=cfg.seed * 1_000_003 + server_round * 1009 + pid,
    )
    train_time = time.perf_counter() - start
    metrics.update(noise_metrics(cfg, model, x, y))
    metrics.update({"train-time-s": train_time, "num-examples": len(y)})
    reply = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord(metrics),
            # what the server logs per client (strings do not fit a MetricRecord)
            "device": ConfigRecord({"profile": spec, "zne": model.zne, "partition-id": pid,
                                    "num-partitions": context.node_config["num-partitions"]}),
        }
    )
    return Message(content=reply, reply_to=msg)


def noise_metrics(cfg: RunConfig, model, x, y) -> dict[str, float]:
    """Hardware and noise-capturing metrics of a trained model on its device.

    ``noise-gap``: noiseless minus noisy accuracy of the same parameters on the local
    data (the accuracy the device's noise costs); ``circuit-depth``, ``two-qubit-gates``
    and ``swaps`` of the circuit as routed to the device's coupling map.
    """
    import torch

    from client.model import PQCClassifier

    xt = torch.as_tensor(x)
    out: dict[str, float] = {k.replace("depth", "circuit-depth"): float(v) for k, v in model.routed_metrics(xt).items()}
    if model.profile is None or model.profile.is_noiseless:
        out["noise-gap"] = 0.0
        return out
    ideal = PQCClassifier(model.n_qubits, model.n_layers, model.n_classes, kind=model.kind, seed=cfg.seed)
    ideal.load_state_dict(model.state_dict())
    out["noise-gap"] = evaluate_model(ideal, x, y)["accuracy"] - evaluate_model(model, x, y)["accuracy"]
    return out


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on the local partition, on this node's device."""
    _, _, _, model, x, y, _ = _setup(msg, context)
    metrics = evaluate_model(model, x, y)
    reply = RecordDict(
        {
            "metrics": MetricRecord(
                {"eval-loss": metrics["loss"], "eval-accuracy": metrics["accuracy"], "num-examples": len(y)}
            )
        }
    )
    return Message(content=reply, reply_to=msg)
