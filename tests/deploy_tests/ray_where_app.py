"""The project's ClientApp behind a mod that notes where each message ran (test_ray_cluster.py).

Every message runs the real handlers of :mod:`client.app`, unchanged; afterwards the mod
appends one JSON line to the file ``$QFL_TEST_WHERE`` names (if it names one): the run, the
message's type, the node's partition and the Ray node (its IP and ID) whose actor ran it.
Ray's workers inherit the variable from the ``ray start`` (or the ``ray.init``) that started
their node, so the file fills on every host of a cluster; one short line per ``write`` in
append mode does not interleave.
"""

from __future__ import annotations

import json
import os

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client import app as real
from qfl.common.contract import WARM_UP_ACTION
from transport.flower import HELLO_ACTION, answer_hello, transport_mod

WHERE_ENV = "QFL_TEST_WHERE"


def where_mod(msg: Message, context: Context, call_next) -> Message:  # noqa: ANN001 (Flower's ClientAppCallable)
    reply = call_next(msg, context)
    path = os.environ.get(WHERE_ENV)
    if path:
        import ray

        line = json.dumps({"run": context.run_config.get("run-name"), "type": msg.metadata.message_type,
                           "partition": context.node_config.get("partition-id"), "ip": ray.util.get_node_ip_address(),
                           "ray_node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()})
        with open(path, "a") as fh:
            fh.write(line + "\n")
    return reply


app = ClientApp(mods=[where_mod, transport_mod])
app.query(HELLO_ACTION)(answer_hello)
app.train()(real.train)
app.evaluate()(real.evaluate)
app.query(WARM_UP_ACTION)(real.warm_up)
