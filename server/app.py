"""The Flower ServerApp: federated training of the PQC with a strategy chosen by name.

Each round: the strategy sends the global parameters to the sampled nodes, aggregates
their replies, then the server evaluates the new global model on the held-out test
split, appends a row to ``metrics.csv``/``metrics.json``, redraws ``metrics.png`` and
checkpoints the parameters (:mod:`server.recorder`). With ``resume = true`` a run
continues from its newest checkpoint.
"""

from __future__ import annotations

import random
import shutil
import time
from logging import INFO, WARNING
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
import numpy as np
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from client.config import RunConfig
from client.task import build_dataset, build_model
from client.train import evaluate
from server.grid import MeteredGrid
from server.instrumented import InstrumentedStrategy
from server.recorder import RunRecorder
from strategies import RoundDeadline, load_strategy, parse_strategy_options
from transport.dp import CentralDPFixedClipping, CentralDPLedger, LocalDPLedger
from transport.flower import TransportGrid
from transport.registry import build_transport

app = ServerApp()

PROGRESS_TAG = "[qfl]"  # the launcher shows lines carrying this tag
NODE_WAIT_POLL_S = 0.5


def run_dir_of(cfg: RunConfig) -> Path:
    """``<output-dir>/<run-name>``, absolute."""
    return Path(cfg.output_dir).expanduser().resolve() / cfg.run_name


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` rounds (fewer if resuming) and record every one."""
    cfg = RunConfig.from_run_config(context.run_config)
    # Flower samples nodes with the global `random` module: seed it for this process.
    random.seed(cfg.seed)

    run_dir = run_dir_of(cfg)
    if not cfg.resume and run_dir.exists():
        # A fresh run replaces an old one of the same name, whole.
        for name in ("checkpoints", "metrics.csv", "metrics.json", "metrics.png", "clients.csv", "privacy.json"):
            target = run_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    recorder = RunRecorder(run_dir)

    data = build_dataset(cfg)
    model = build_model(cfg, data)
    arrays = ArrayRecord(model.state_dict())
    start_round = 0
    if cfg.resume:
        latest = recorder.load_latest()
        if latest is None:
            log(WARNING, "%s resume: no checkpoint in %s, starting fresh", PROGRESS_TAG, run_dir)
        else:
            start_round, arrays = latest
            _check_compatible(arrays, ArrayRecord(model.state_dict()))
            log(INFO, "%s resuming from round %d (%s)", PROGRESS_TAG, start_round, run_dir)
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
    strategy = InstrumentedStrategy(inner)
    stack = build_transport(cfg.transport, context.run_config)
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
        if isinstance(wire_grid, TransportGrid):
            missing += wire_grid.take_unsent()
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
            "clients_failed": int(train.get("clients-failed", 0)) + missing,
            "stragglers": int(train.get("stragglers", 0)),
            "stale_folded": int(train.get("stale-folded", 0)),
        }
        client_rows = strategy.take_client_rows() if server_round > 0 else []
        row["dp_epsilon"] = float("nan")
        if isinstance(ledger, LocalDPLedger):
            released = [_privacy_unit(r) for r in client_rows]
            ledger.record(released)
            for r, unit in zip(client_rows, released):
                r["dp_epsilon"] = ledger.epsilon(unit)
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
        if row["clients_failed"]:
            log(WARNING, "%s round %d finished without %d client(s)", PROGRESS_TAG, absolute_round, row["clients_failed"])
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
