"""The attack ClientApp of ``qfl experiment attacks``: the real ClientApp, some of whose
nodes attack.

Every node runs the real handlers of :mod:`client.app` (training, evaluation, warm-up) on
its partition; :func:`attack_mod` then replaces the training replies of the attacking
partitions, as a hostile ClientApp would, by what the run config's ``simulated-attack``
names, made by the shared harness :mod:`qfl.experiments.attacks`:

- ``sign-flip``: partition 0 sends :math:`w - 3 (w_k - w)`, the global model minus three
  times its honest update (inside the guard's 4x norm bar);
- ``colluders``: partitions 0 and 1 both do;
- ``sideways``, ``alie``, ``ipm``, ``min-max``, ``min-sum``: partitions 0 and 1 send the
  harness's crafted update (:func:`~qfl.experiments.attacks.craft`), each with noise of its
  own, from what a client knows (:func:`~qfl.experiments.attacks.partial_knowledge`: its own
  honest update and the global model's last step, kept in the node's state), the sideways
  drift along one direction drawn from the run's seed, which both agree on unasked;
- ``absent``: partitions 0 and 1 answer with an error (the control: what a perfect
  defence would leave of the round).

The real ClientApp refuses to run with ``simulated-attack`` set, so this key cannot turn
a deployment's clients into attackers; only this app, named by the experiment as its
ClientApp component on the simulation engine, reads it. Plain transport only (an
attacker who encrypts is the same attacker; the corruption needs the update in clear).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Error, Message, MessageType
from flwr.clientapp import ClientApp

from client import app as real
from qfl.common.config import KEY, NodeConfig, RunConfig
from qfl.common.contract import ARRAYS, SERVER_ROUND, WARM_UP_ACTION
from qfl.experiments import attacks
from qfl.experiments.attacks import ABSENT_CODE, ATTACKERS, FLIP, sign_flipped  # noqa: F401 (this app's attacks)
from transport.flower import HELLO_ACTION, answer_hello, transport_mod

LAST_GLOBAL = "attack-last-global"  # the node's state: the global model of its previous training round


def crafted(reply: Message, request: Message, context: Context, cfg: RunConfig, node: NodeConfig) -> Message:
    """``reply`` with the update the run's crafted attack makes of what this client knows."""
    sent = request.content[ARRAYS]
    last = attacks.global_step(context.state.array_records.get(LAST_GLOBAL), sent)
    context.state[LAST_GLOBAL] = sent
    known = attacks.partial_knowledge(attacks.update_of(reply, request), last)
    server_round = next((int(r[SERVER_ROUND]) for r in request.content.config_records.values() if SERVER_ROUND in r), 0)
    rng = np.random.default_rng([cfg.seed, node.partition_id, server_round])
    update = attacks.craft(cfg.simulated_attack, known, 1, rng, total=node.num_partitions,
                           colluders=len(ATTACKERS[cfg.simulated_attack]),
                           direction=attacks.sideways_direction(known.shape[1], cfg.seed))[0]
    return attacks.with_update(reply, request, update)


def attack_mod(msg: Message, context: Context, call_next) -> Message:  # noqa: ANN001 (Flower's ClientAppCallable)
    """Run the real handler with the attack taken out of the run config; then, on an
    attacking partition, replace its training reply."""
    cfg = RunConfig.from_run_config(context.run_config)
    if cfg.simulated_attack and cfg.transport != "plain":
        return Message(Error(ABSENT_CODE, f"{KEY.simulated_attack} needs transport = \"plain\""), reply_to=msg)
    honest = Context(run_id=context.run_id, node_id=context.node_id, node_config=context.node_config,
                     state=context.state, run_config={**context.run_config, KEY.simulated_attack: ""})
    reply = call_next(msg, honest)
    node = NodeConfig.from_node_config(context.node_config)
    if msg.metadata.message_type != MessageType.TRAIN or node.partition_id not in ATTACKERS.get(cfg.simulated_attack, ()):
        return reply
    if cfg.simulated_attack == "absent":
        return attacks.absent(msg)
    if reply.has_error():
        return reply
    if cfg.simulated_attack in attacks.CRAFTED:
        return crafted(reply, msg, context, cfg, node)
    return sign_flipped(reply, msg)


app = ClientApp(mods=[attack_mod, transport_mod])
app.query(HELLO_ACTION)(answer_hello)
app.train()(real.train)
app.evaluate()(real.evaluate)
app.query(WARM_UP_ACTION)(real.warm_up)
