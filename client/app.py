"""The Flower ClientApp: local PQC training and evaluation on this node's partition.

Each SuperNode names its partition with ``--node-config 'partition-id=I num-partitions=N'``
(Flower's simulation engine sets both). Every message starts a fresh process, so the
data come from the on-disk cache (:mod:`client.data`) and nothing else is loaded.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.config import RunConfig, node_partition
from client.data import load_partition
from client.task import build_dataset, build_model
from client.train import evaluate as evaluate_model
from client.train import train_local

app = ClientApp()


def _setup(msg: Message, context: Context):
    cfg = RunConfig.from_run_config(context.run_config)
    pid, num = node_partition(context.node_config)
    data = build_dataset(cfg)
    x, y = load_partition(data, pid, num, cfg.partitioner, cfg.seed, cfg.dirichlet_alpha)
    model = build_model(cfg, data)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict(), strict=True)
    return cfg, pid, model, x, y


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on the local partition; reply with the new one."""
    cfg, pid, model, x, y = _setup(msg, context)
    config = msg.content["config"]
    # the round number of the whole run, also after the server resumed a checkpoint
    server_round = int(config["server-round"]) + int(config["round-offset"])
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
    reply = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({**metrics, "num-examples": len(y)}),
        }
    )
    return Message(content=reply, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on the local partition."""
    _, pid, model, x, y = _setup(msg, context)
    metrics = evaluate_model(model, x, y)
    reply = RecordDict(
        {
            "metrics": MetricRecord(
                {"eval-loss": metrics["loss"], "eval-accuracy": metrics["accuracy"], "num-examples": len(y)}
            )
        }
    )
    return Message(content=reply, reply_to=msg)
