"""A federation in one process, for tests and studies where the process boundary is not what is measured.

The real ClientApp (``client.app``, its in-process path), the real strategy chain behind the
server's real guard (as :mod:`server.app` builds them), the real central evaluation; no
SuperLink, no SuperNodes, no wire. ``corrupt(node, reply)`` stands for a hostile ClientApp:
it may replace any node's training reply, knowing the request it answers (``requests``).
Messages built outside a Flower process need a task identity: :func:`task_identity`.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Message, RecordDict

from qfl.common.contract import NODE_NUM_PARTITIONS, NODE_PARTITION_ID, ROUND_OFFSET
from qfl.common.flower_internals import stamp, task_identity  # noqa: F401 (task_identity: run a federation with it)


class InProcessFederation:
    """A federation in this process with the real parts: the real ClientApp (its in-process
    path: there is no SuperNode to run a worker beside), the real strategies behind the server's real guard, as
    ``server.app`` chains them; each node keeps its Flower state between rounds, as a
    SuperNode does. ``corrupt(node, reply)`` may replace a node's reply (an attacker)."""

    def __init__(self, run_config: dict, clients: int = 3, corrupt=None) -> None:  # noqa: ANN001
        from qfl.common.config import RunConfig
        from qfl.task.build import build_dataset, build_model
        from server.app import PartitionSizes
        from server.chain import guard_screens, server_strategy
        from server.instrumented import InstrumentedStrategy, train_reply_schema

        self.run_config = dict(run_config)
        self.cfg = RunConfig.from_run_config(self.run_config)
        self.clients, self.corrupt = clients, corrupt
        self.data = build_dataset(self.cfg)
        self.model = build_model(self.cfg, self.data)
        self.arrays = ArrayRecord(self.model.state_dict())
        inner, _, reply_arrays = server_strategy(self.cfg)
        norm_factor, examples_factor, direction = guard_screens(self.cfg)
        self.guard = InstrumentedStrategy(inner, train_reply_schema(extra_arrays=reply_arrays), norm_factor, examples_factor,
                                          PartitionSizes(self.cfg, self.data), direction)
        self.states = {n: RecordDict() for n in range(1, clients + 1)}
        self.requests: dict[str, Message] = {}
        self.stats: list[dict] = []
        self.rows: list[dict] = []
        # the nodes' federated evaluation after each round (fraction-evaluate > 0): fed_eval_* as metrics.csv has them
        self.evaluations: list[dict] = []
        self.accuracy: list[float] = [self.evaluate()]

    def get_node_ids(self):  # noqa: ANN201 (the grid the strategies sample from)
        return list(range(1, self.clients + 1))

    def round(self, rnd: int) -> None:
        from flwr.app import ConfigRecord, Context

        from client.app import app

        replies = []
        for i, msg in enumerate(self.guard.configure_train(rnd, self.arrays, ConfigRecord({ROUND_OFFSET: 0}), self)):
            stamp(msg, message_id=f"r{rnd}-{i}")
            self.requests[msg.metadata.message_id] = msg
            node = msg.metadata.dst_node_id
            ctx = Context(run_id=1, node_id=node, node_config={NODE_PARTITION_ID: node - 1, NODE_NUM_PARTITIONS: self.clients},
                          state=self.states[node], run_config=self.run_config)
            reply = app(msg, ctx)
            replies.append(self.corrupt(node, reply) if self.corrupt else reply)
        new, _ = self.guard.aggregate_train(rnd, replies)
        self.arrays = new if new is not None else self.arrays
        self.stats.append(self.guard.take_round_stats())
        self.rows += self.guard.take_client_rows()
        self.accuracy.append(self.evaluate())
        if self.cfg.fraction_evaluate > 0:
            self.evaluations.append(self.evaluate_nodes(rnd))

    def _context(self, node: int):  # noqa: ANN202 (a Flower Context of node ``node``)
        from flwr.app import Context

        return Context(run_id=1, node_id=node, node_config={NODE_PARTITION_ID: node - 1, NODE_NUM_PARTITIONS: self.clients},
                       state=self.states[node], run_config=self.run_config)

    def evaluate_nodes(self, rnd: int) -> dict:
        """The nodes' evaluation of the global model on their held-out rows, through the guard, as
        ``metrics.csv`` records it (``fed_eval_*``; a regression run's RMSE and R^2 too)."""
        from flwr.app import ConfigRecord

        from client.app import app
        from qfl.common.config import REGRESSION
        from server.rounds import regression_columns

        replies = []
        for i, msg in enumerate(self.guard.configure_evaluate(rnd, self.arrays, ConfigRecord({ROUND_OFFSET: 0}), self)):
            stamp(msg, message_id=f"e{rnd}-{i}")
            replies.append(app(msg, self._context(msg.metadata.dst_node_id)))
        self.guard.aggregate_evaluate(rnd, replies)
        row = self.guard.take_evaluation()
        if self.cfg.task_kind == REGRESSION:
            train = self.stats[-1] if self.stats else {}
            from qfl.common.contract import TRAIN_ACCURACY, TRAIN_LOSS

            row = {**row, **regression_columns({**row, "train_loss": train.get(TRAIN_LOSS, float("nan")),
                                                "train_accuracy": train.get(TRAIN_ACCURACY, float("nan"))})}
        return row

    def run(self, rounds: int) -> InProcessFederation:
        for rnd in range(1, rounds + 1):
            self.round(rnd)
        return self

    def evaluate(self) -> float:
        """The global model's central test accuracy (NaN where the server holds no test rows: the
        nodes' own files, which they evaluate themselves, :meth:`evaluate_nodes`)."""
        from qfl.task.train import evaluate

        if len(self.data.y_test) == 0:
            return float("nan")
        self.model.load_state_dict(self.arrays.to_torch_state_dict())
        return evaluate(self.model, self.data.x_test, self.data.y_test)["accuracy"]
