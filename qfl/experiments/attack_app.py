"""The attack ClientApp of ``qfl experiment attacks``: the real ClientApp, some of whose
nodes attack.

Every node runs the real handlers of :mod:`client.app` (training, evaluation, warm-up) on
its partition; :func:`attack_mod` then replaces the training replies of the attacking
partitions, as a hostile ClientApp would, by what the run config's ``simulated-attack``
names:

- ``sign-flip``: partition 0 sends :math:`w - 3 (w_k - w)`, the global model minus three
  times its honest update (inside the guard's 4x norm bar);
- ``colluders``: partitions 0 and 1 both do;
- ``absent``: partitions 0 and 1 answer with an error (the control: what a perfect
  defence would leave of the round).

The real ClientApp refuses to run with ``simulated-attack`` set, so this key cannot turn
a deployment's clients into attackers; only this app, named by the experiment as its
ClientApp component on the simulation engine, reads it. Plain transport only (an
attacker who encrypts is the same attacker; the corruption needs the update in clear).
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, Context, Error, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from client import app as real
from qfl.common.config import KEY, NodeConfig, RunConfig
from qfl.common.contract import ARRAYS, WARM_UP_ACTION
from transport.flower import HELLO_ACTION, answer_hello, transport_mod

ATTACKERS = {"sign-flip": (0,), "colluders": (0, 1), "absent": (0, 1)}  # partitions
FLIP = 3.0  # global - FLIP x the honest update
ABSENT_CODE = 4390


def sign_flipped(reply: Message, request: Message) -> Message:
    """``reply`` with its parameters :math:`w - F (w_k - w)`: the honest update reversed and scaled."""
    sent = request.content[ARRAYS]
    arrays = {k: Array(sent[k].numpy() - FLIP * (v.numpy() - sent[k].numpy())) for k, v in reply.content[ARRAYS].items()}
    content = RecordDict(dict(reply.content.items()))
    content[ARRAYS] = ArrayRecord(arrays)
    return Message(content=content, reply_to=request)


def attack_mod(msg: Message, context: Context, call_next) -> Message:  # noqa: ANN001 (Flower's ClientAppCallable)
    """Run the real handler with the attack taken out of the run config; then, on an
    attacking partition, replace its training reply."""
    cfg = RunConfig.from_run_config(context.run_config)
    if cfg.simulated_attack and cfg.transport != "plain":
        return Message(Error(ABSENT_CODE, f"{KEY.simulated_attack} needs transport = \"plain\""), reply_to=msg)
    honest = Context(run_id=context.run_id, node_id=context.node_id, node_config=context.node_config,
                     state=context.state, run_config={**context.run_config, KEY.simulated_attack: ""})
    reply = call_next(msg, honest)
    partition = NodeConfig.from_node_config(context.node_config).partition_id
    if msg.metadata.message_type != MessageType.TRAIN or partition not in ATTACKERS.get(cfg.simulated_attack, ()):
        return reply
    if cfg.simulated_attack == "absent":
        return Message(Error(ABSENT_CODE, "absent (simulated-attack control)"), reply_to=msg)
    return reply if reply.has_error() else sign_flipped(reply, msg)


app = ClientApp(mods=[attack_mod, transport_mod])
app.query(HELLO_ACTION)(answer_hello)
app.train()(real.train)
app.evaluate()(real.evaluate)
app.query(WARM_UP_ACTION)(real.warm_up)
