"""The Flower ClientApp: local PQC training and evaluation on this node's partition.

Each SuperNode names its partition with ``--node-config 'partition-id=I num-partitions=N'``
(Flower's simulation engine sets both). Flower starts a fresh process for every message,
so this module stays thin: flwr, numpy and the transports. The work itself, with torch,
PennyLane, the data partition and the model, runs in the node's warm worker or, on the
simulation engine and with ``warm-runtime = false``, in this process
(:mod:`client.runtime`; the same numbers either way, :mod:`client.local`).
"""

from __future__ import annotations

from logging import INFO

from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore import log

from client.job import CLIENT_CONTROL, request
from client.runtime import WorkerError, run, watched_pid
from qfl.common.config import KEY, ConfigError, NodeConfig, RunConfig
from qfl.task.local_data import DataError
from qfl.common.contract import (
    DEVICE,
    DEVICE_NUM_PARTITIONS,
    DEVICE_PARTITION,
    SECAGG_ACTION,
    SECAGG_RECORD,
    WARM_UP_ACTION,
)
from transport.flower import HELLO_ACTION, answer_hello, transport_mod
from transport.base import TransportError
from transport.secagg_flower import node_key_record, secagg_stage

WORKER_ERROR_CODE = 4301
DATA_ERROR_CODE = 4302  # this node's own data file is unusable (dataset = "file"): the reason names the file

# The transport mod decodes what arrives and encodes the reply (run config `transport`).
app = ClientApp(mods=[transport_mod])
# the server asks a node which SAE it is once per run (transports that identify ends)
app.query(HELLO_ACTION)(answer_hello)
# the stages of secure aggregation around a training message (transport = "secagg")
app.query(SECAGG_ACTION)(secagg_stage)


def _refuse_attack(cfg: RunConfig) -> None:
    """This ClientApp never attacks: a run config that asks for a simulated attack is for
    the attack ClientApp of ``qfl experiment attacks`` only, and a server cannot use it to
    turn real clients into attackers."""
    if cfg.simulated_attack:
        raise ConfigError(KEY.simulated_attack, "is read only by the attack ClientApp of qfl experiment attacks "
                                                "(qfl.experiments.attack_app); this ClientApp refuses to run with it")


def _reply(op: str, msg: Message, context: Context) -> Message:
    try:
        cfg = RunConfig.from_run_config(context.run_config)
        _refuse_attack(cfg)
        node = NodeConfig.from_node_config(context.node_config)
        req = request(op, msg.content, dict(context.run_config), dict(context.node_config), context.state)
        reply = run(req, cfg, node, context.node_id)
        if CLIENT_CONTROL in reply.array_records:  # SCAFFOLD: this client's variate stays on the node
            log(INFO, "SCAFFOLD: control variate %s, kept in the node's state",
                "updated" if CLIENT_CONTROL in context.state.array_records else "started")
            context.state[CLIENT_CONTROL] = reply.array_records[CLIENT_CONTROL]
            del reply[CLIENT_CONTROL]
        return Message(content=reply, reply_to=msg)
    except (ConfigError, WorkerError, DataError) as err:
        return Message(Error(DATA_ERROR_CODE if isinstance(err, DataError) else WORKER_ERROR_CODE, f"client: {err}"),
                       reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on the local partition (on this node's simulated
    device); reply with the new parameters, train metrics and noise-capturing metrics."""
    return _reply("train", msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on the local partition, on this node's device."""
    return _reply("evaluate", msg, context)


@app.query(WARM_UP_ACTION)
def warm_up(msg: Message, context: Context) -> Message:
    """Start this node's warm worker and build its task now, while the server still builds
    its own model: round 1 then finds it ready (without a warm runtime there is nothing to
    build). The answer names the node's partition, which the server binds it to, and under
    secure aggregation carries the node's keys for the run, signed with its certified
    identity; a node without one refuses, named."""
    try:
        cfg = RunConfig.from_run_config(context.run_config)
        _refuse_attack(cfg)
        node = NodeConfig.from_node_config(context.node_config)
        if cfg.dataset == "file":  # the node's own data, checked before round 1 whichever path trains on it
            from qfl.task.local_data import node_dataset

            node_dataset(cfg, node)
    except (ConfigError, DataError) as err:
        return Message(Error(DATA_ERROR_CODE if isinstance(err, DataError) else WORKER_ERROR_CODE, f"client: {err}"),
                       reply_to=msg)
    if watched_pid(cfg, node) is not None:
        reply = _reply("prepare", msg, context)
        if reply.has_error():
            return reply
    who = ConfigRecord({DEVICE_PARTITION: node.partition_id, DEVICE_NUM_PARTITIONS: node.num_partitions})
    answer = RecordDict({DEVICE: who})
    if cfg.uses_transport("secagg"):  # the node's signed keys for the run's secure aggregation: no exchange later
        try:
            answer[SECAGG_RECORD] = node_key_record(context)
        except TransportError as err:
            return Message(Error(WORKER_ERROR_CODE, f"client: {err}"), reply_to=msg)
    return Message(answer, reply_to=msg)
