"""The Flower ServerApp: federated training of the PQC with a strategy chosen by name.

Each round: the strategy sends the global parameters to the sampled nodes, aggregates
their replies, then the server evaluates the new global model on the held-out test
split, appends a row to ``metrics.csv``/``metrics.json``, redraws ``metrics.png`` and
checkpoints the parameters (:mod:`server.recorder`). With ``resume = true`` a run
continues from its newest checkpoint.
"""

from __future__ import annotations

import random
from collections import Counter
import time
from logging import INFO, WARNING
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
import numpy as np
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from client.config import RunConfig
from client.data import partition_indices
from client.task import build_dataset, build_model
from client.train import evaluate
from server.grid import MeteredGrid
from server.instrumented import InstrumentedStrategy, train_reply_schema
from server.recorder import RunRecorder
from strategies import RoundDeadline, load_strategy, parse_strategy_options
from transport.contract import DEVICE, DEVICE_NUM_PARTITIONS, DEVICE_PARTITION
from transport.dp import CentralDPFixedClipping, CentralDPLedger, LocalDPLedger
from transport.flower import TransportGrid
from transport.registry import build_transport

app = ServerApp()

PROGRESS_TAG = "[qfl]"  # the launcher shows lines carrying this tag
NODE_WAIT_POLL_S = 0.5


def run_dir_of(cfg: RunConfig, run_id: int) -> Path:
    """``<output-dir>/<run-name>``, absolute; an empty run-name is the start time and run ID."""
    name = cfg.run_name or f"{time.strftime('%Y%m%d-%H%M%S')}-run{run_id}"
    return Path(cfg.output_dir).expanduser().resolve() / name


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` rounds (fewer if resuming) and record every one."""
    cfg = RunConfig.from_run_config(context.run_config)
    # Flower samples nodes with the global `random` module: seed it for this process.
    random.seed(cfg.seed)

    run_dir = run_dir_of(cfg, context.run_id)
    if not cfg.resume and any((run_dir / name).exists() for name in ("metrics.json", "checkpoints")):
        raise RunFailed(f"{run_dir} holds a run already: nothing of it is replaced. Set resume = true to "
                        "continue it, or another run-name (or \"\" for a timestamped one) for a new run")
    recorder = RunRecorder(run_dir)

    data = build_dataset(cfg)
    model = build_model(cfg, data)
    arrays = ArrayRecord(model.state_dict())
    start_round = 0
    if cfg.resume:
        latest = recorder.load_latest(cfg.num_server_rounds)
        if latest is None:
            log(WARNING, "%s resume: no checkpoint in %s, starting fresh", PROGRESS_TAG, run_dir)
        else:
            for name, why in latest.skipped:
                log(WARNING, "%s resume: skipped checkpoint %s: %s", PROGRESS_TAG, name, why)
            start_round, arrays = latest.server_round, latest.arrays
            _check_compatible(arrays, ArrayRecord(model.state_dict()))
            log(INFO, "%s resuming from round %d (%s)", PROGRESS_TAG, start_round, latest.path)
    remaining = cfg.num_server_rounds - start_round
    if remaining <= 0:
        log(INFO, "%s nothing to do: %d of %d rounds done", PROGRESS_TAG, start_round, cfg.num_server_rounds)
        return

    metered = MeteredGrid(grid)
    _wait_for_nodes(metered, cfg.min_nodes)
    inner = build_strategy(cfg)
    ledger, central_dp = None, None
    if cfg.uses_transport("dp"):
        ledger_cls = LocalDPLedger if cfg.dp_mode == "local" else CentralDPLedger
        ledger = ledger_cls(cfg.dp_noise_multiplier, cfg.dp_delta, cfg.dp_accountant)
        if start_round > 0:
            state = recorder.load_privacy()
            if state is None:
                raise ValueError(f"cannot resume a DP run without its privacy ledger ({recorder.privacy_path}): "
                                 "epsilon would restart from zero")
            ledger.load(state)
        log(INFO, "%s DP (%s): clip %.3g, noise multiplier %.3g, delta %.1e, %s accountant",
            PROGRESS_TAG, cfg.dp_mode, cfg.dp_clip, cfg.dp_noise_multiplier, cfg.dp_delta, cfg.dp_accountant)
        if cfg.dp_mode == "central":
            inner = central_dp = CentralDPFixedClipping(inner, cfg.dp_noise_multiplier, cfg.dp_clip)
    if cfg.round_deadline > 0:
        inner = RoundDeadline(inner, cfg.round_deadline, cfg.straggler_policy, cfg.staleness_discount)
    stack = build_transport(cfg.transport, context.run_config)
    schema = train_reply_schema(stack.reply_metrics, stack.reply_configs)
    strategy = InstrumentedStrategy(inner, schema, cfg.robust_norm_factor, cfg.robust_examples_factor,
                                    PartitionSizes(cfg, data))
    # strategy -> transport -> wire: the transport encodes what the metered grid sends
    wire_grid = TransportGrid(metered, stack, context.run_id, lambda: strategy.current_round) if stack.transports else metered
    clock = {"t": time.monotonic()}

    def central_evaluate(server_round: int, global_arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(global_arrays.to_torch_state_dict())
        test = evaluate(model, data.x_test, data.y_test)
        result = MetricRecord({"test-loss": test["loss"], "test-accuracy": test["accuracy"]})
        absolute_round = start_round + server_round
        if server_round == 0 and start_round > 0:
            return result  # resumed: round `start_round` is recorded already
        now = time.monotonic()
        train = strategy.take_round_stats()
        bytes_down, bytes_up, missing = metered.take_counters()
        unsent = wire_grid.take_unsent() if isinstance(wire_grid, TransportGrid) else []
        row = {
            "round": absolute_round,
            "train_loss": train.get("train-loss", float("nan")),
            "train_accuracy": train.get("train-accuracy", float("nan")),
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
            "round_time_s": 0.0 if server_round == 0 else now - clock["t"],
            "bytes_down": bytes_down,
            "bytes_up": bytes_up,
            "clients_ok": int(train.get("clients-ok", 0)),
            "clients_failed": int(train.get("clients-failed", 0)) + len(missing) + len(unsent),
            "clients_rejected": int(train.get("clients-rejected", 0)),
            "clients_trimmed": int(train.get("clients-trimmed", 0)),
            "clients_capped": int(train.get("clients-capped", 0)),
            "stragglers": int(train.get("stragglers", 0)),
            "stale_folded": int(train.get("stale-folded", 0)),
        }
        client_rows = strategy.take_client_rows() if server_round > 0 else []
        row["dp_epsilon"] = float("nan")
        if isinstance(ledger, LocalDPLedger):
            senders = [r for r in client_rows if not str(r["status"]).startswith("failed")]  # an error reply releases nothing
            ledger.record([_privacy_unit(r) for r in senders])
            for r in senders:
                r["dp_epsilon"] = ledger.epsilon(_privacy_unit(r))
            row["dp_epsilon"] = ledger.worst()
        elif isinstance(ledger, CentralDPLedger):
            if server_round > 0 and central_dp is not None and central_dp.last_sample is not None:
                ledger.record(*central_dp.last_sample)
                central_dp.last_sample = None
            row["dp_epsilon"] = ledger.epsilon
            for r in client_rows:
                r["dp_epsilon"] = row["dp_epsilon"]
        clock["t"] = now
        recorder.add_row(row)
        if server_round > 0:
            recorder.add_client_rows(absolute_round, client_rows)
        if ledger is not None:
            recorder.save_privacy(ledger.state())
        recorder.save_checkpoint(absolute_round, global_arrays)
        log(
            INFO,
            "%s round %d/%d  test-acc %.3f  test-loss %.4f  train-loss %.4f  "
            "clients %d ok / %d failed  %.1f s  %d B down / %d B up",
            PROGRESS_TAG,
            absolute_round,
            cfg.num_server_rounds,
            row["test_accuracy"],
            row["test_loss"],
            row["train_loss"],
            row["clients_ok"],
            row["clients_failed"],
            row["round_time_s"],
            bytes_down,
            bytes_up,
        )
        if row["stragglers"] or row["stale_folded"]:
            log(INFO, "%s round %d: %d straggler(s) past the %.3g s deadline (%s), %d late update(s) folded in",
                PROGRESS_TAG, absolute_round, row["stragglers"], cfg.round_deadline, cfg.straggler_policy,
                row["stale_folded"])
        causes = [(r["node_id"], r["status"]) for r in client_rows if r["status"] != "ok"]
        causes += [(node, f"nothing sent: {why}") for node, why in unsent]
        causes += [(node, "no reply within the round timeout") for node in missing]
        if causes:
            log(WARNING, "%s round %d: %d ok, %d failed, %d rejected, %d trimmed, %d capped", PROGRESS_TAG, absolute_round,
                row["clients_ok"], row["clients_failed"], row["clients_rejected"], row["clients_trimmed"], row["clients_capped"])
            for node, why in causes:
                log(WARNING, "%s   node %s: %s", PROGRESS_TAG, node, why)
        if server_round > 0 and row["clients_ok"] == 0:
            raise RunFailed(f"round {absolute_round} got no valid update: "
                            + ("; ".join(f"node {n}: {why}" for n, why in causes) or "no client was sampled"))
        return result

    log(INFO, "%s transport: %s", PROGRESS_TAG, stack.name if stack.transports else "plain")
    strategy.start(
        grid=wire_grid,
        initial_arrays=arrays,
        num_rounds=remaining,
        timeout=cfg.round_timeout,
        train_config=ConfigRecord({"round-offset": start_round}),
        evaluate_config=ConfigRecord({"round-offset": start_round}),
        evaluate_fn=central_evaluate,
    )
    log(INFO, "%s done: metrics and checkpoints in %s", PROGRESS_TAG, run_dir)


class PartitionSizes:
    """How many examples each reply can really hold: its partition's size, rebuilt from the seed.

    A reply claims its ``partition-id``; the number of partitions is the one most of the
    round's replies claim, so one client cannot choose a coarser split to look bigger. A
    claim that fits no partition gets no bound (the median rule still applies).
    """

    def __init__(self, cfg: RunConfig, data) -> None:  # noqa: ANN001
        self.cfg, self.data = cfg, data
        self._sizes: dict[int, list[int]] = {}

    def sizes(self, num_partitions: int) -> list[int] | None:
        if num_partitions not in self._sizes:
            try:
                parts = partition_indices(self.data.y_train, num_partitions, self.cfg.partitioner, self.cfg.seed,
                                          self.cfg.dirichlet_alpha, self.data.h_train)
            except ValueError:
                return None
            self._sizes[num_partitions] = [len(p) for p in parts]
        return self._sizes[num_partitions]

    def __call__(self, replies: list[Message]) -> list[float | None]:
        claims = [_device_claim(m) for m in replies]
        counts = Counter(num for _, num in claims if num is not None)
        if not counts:
            return [None] * len(replies)
        num = counts.most_common(1)[0][0]
        sizes = self.sizes(num)
        return [float(sizes[pid]) if sizes is not None and pid is not None and 0 <= pid < num else None
                for pid, _ in claims]


def _device_claim(msg: Message) -> tuple[int | None, int | None]:
    """``(partition-id, num-partitions)`` a reply claims, ``None`` where not a plausible integer."""
    device = msg.content.config_records.get(DEVICE, {})

    def integer(key: str) -> int | None:
        value = device.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1_000_000 else None

    pid, num = integer(DEVICE_PARTITION), integer(DEVICE_NUM_PARTITIONS)
    return pid, (num if num is not None and num >= 1 else None)


class RunFailed(RuntimeError):
    """The run cannot go on (e.g. a round without a single valid update); the message says why."""


def build_strategy(cfg: RunConfig):  # -> flwr.serverapp.strategy.Strategy
    """The strategy the run config names, with its sampling settings and options.

    Every strategy gets FedAvg's sampling keywords, then ``strategy-options``.
    """
    options = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        # Wait for `min-nodes` once, before round 1; after that a round goes on with
        # the nodes still connected, so a node that dies cannot stall the run.
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1 if cfg.fraction_evaluate > 0 else 0,
        "min_available_nodes": 1,
    }
    options.update(parse_strategy_options(cfg.strategy_options))
    return load_strategy(cfg.strategy, **options)


def _privacy_unit(client_row: dict[str, object]) -> str:
    """Whose privacy a reply spends: its data partition (the data owner), else its node."""
    pid = client_row.get("partition_id", "")
    return f"partition-{pid}" if pid != "" else f"node-{client_row['node_id']}"


def _wait_for_nodes(grid: Grid, min_nodes: int) -> None:
    """Block until ``min_nodes`` SuperNodes are connected (as Flower's sampling does)."""
    announced = False
    while (n := len(list(grid.get_node_ids()))) < min_nodes:
        if not announced:
            log(INFO, "%s waiting for %d node(s) (%d connected)", PROGRESS_TAG, min_nodes, n)
            announced = True
        time.sleep(NODE_WAIT_POLL_S)


def _check_compatible(saved: ArrayRecord, fresh: ArrayRecord) -> None:
    """A checkpoint must have the model's parameter names and shapes."""
    want = {k: tuple(v.shape) for k, v in fresh.items()}
    got = {k: tuple(v.shape) for k, v in saved.items()}
    if want != got:
        raise ValueError(
            f"checkpoint parameters {got} do not match the model {want}: "
            "was the run started with other n-qubits/n-layers/dataset?"
        )
