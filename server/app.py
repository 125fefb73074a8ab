"""The Flower ServerApp: federated training of the PQC with a strategy chosen by name.

Each round: the strategy sends the global parameters to the sampled nodes; the server's
guard checks their replies and the strategy aggregates them; then the
:class:`~server.rounds.RoundRecorder` evaluates the new global model centrally, records the
round (``metrics.csv``, ``clients.csv``, a checkpoint; :mod:`server.recorder`) and reports
it (the log, ``progress.jsonl``, any metric sinks). With ``resume = true`` a run continues
from its newest intact checkpoint.

The strategy Flower runs is a chain, the wire nearest the bottom::

    InstrumentedStrategy (the guard) -> RoundDeadline? -> CentralDPFixedClipping? -> the named strategy
"""

from __future__ import annotations

import random
import time
from collections import Counter
from logging import INFO, WARNING
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from qfl.common.config import RunConfig
from qfl.common.contract import (
    NUM_EXAMPLES,
    ROUND_OFFSET,
    SECAGG_DROPPED,
    SECAGG_RECORD,
    SECAGG_SUMMED,
    SIMULATION_PARTITIONS,
)
from qfl.task.build import build_dataset, build_model
from qfl.task.data import partition_indices
from server.chain import build_strategy, guard_screens, server_strategy
from server.checks import check_run
from server.grid import MeteredGrid
from server.instrumented import InstrumentedStrategy, device_claim, train_reply_schema
from server.progress import ProgressLog
from server.recorder import RunRecorder, holds_run
from server.rounds import PROGRESS_TAG, RoundRecorder, RunFailed
from server.sinks import open_sinks
from strategies.validation import ReplySchema
from transport.dp import CentralDPLedger, LocalDPLedger
from transport.flower import WARM_UP_TYPE, TransportGrid
from transport.registry import build_transport
from transport.secagg_flower import SecAggGrid

app = ServerApp()

NODE_WAIT_POLL_S = 0.2

__all__ = ["RunFailed", "app", "build_strategy", "run_dir_of"]


def run_dir_of(cfg: RunConfig, run_id: int) -> Path:
    """``<output-dir>/<run-name>``, absolute; an empty run-name is the start time and run ID."""
    name = cfg.run_name or f"{time.strftime('%Y%m%d-%H%M%S')}-run{run_id}"
    return Path(cfg.output_dir).expanduser().resolve() / name


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` rounds (fewer if resuming) and record every one."""
    entered = time.time()
    cfg = RunConfig.from_run_config(context.run_config)
    warm_up = WarmUp.push(grid, cfg, context.state)  # first: the nodes build their models while this process builds its own
    check_run(cfg)  # what the configuration model cannot check alone, before round 1
    # Flower samples nodes with the global `random` module, from the nodes in the order the
    # grid lists them (by partition, see MeteredGrid): seeded, the same partitions train in
    # every run of the same config. Under central DP the sample is the privacy mechanism's
    # own (its amplification assumes nobody can predict it): drawn from OS entropy.
    random.seed(None if cfg.uses_transport("dp") and cfg.dp_mode == "central" else cfg.seed)
    run_dir = run_dir_of(cfg, context.run_id)
    if not cfg.resume and holds_run(run_dir):
        raise RunFailed(f"{run_dir} holds a run already: nothing of it is replaced. Set resume = true to "
                        "continue it, or another run-name (or \"\" for a timestamped one) for a new run")
    progress = ProgressLog(run_dir)
    progress.emit("serverapp", entered=entered, warm_up_pushed=warm_up.pushed_at)  # the start-up timeline
    sinks = open_sinks(cfg, run_dir)
    try:
        _run(grid, context, cfg, run_dir, progress, sinks, warm_up)
    except BaseException as err:
        progress.emit("end", status="failed", why=f"{type(err).__name__}: {err}")
        raise
    finally:
        for sink in sinks:
            sink.close()
    progress.emit("end", status="done", why="")
    log(INFO, "%s done: metrics and checkpoints in %s", PROGRESS_TAG, run_dir)


def _run(grid: Grid, context: Context, cfg: RunConfig, run_dir: Path, progress: ProgressLog, sinks: list,
         warm_up: WarmUp) -> None:
    files = RunRecorder(run_dir)
    try:
        _federate(grid, context, cfg, files, progress, sinks, warm_up)
    finally:
        files.close()


def _federate(grid: Grid, context: Context, cfg: RunConfig, files: RunRecorder, progress: ProgressLog, sinks: list,
              warm_up: WarmUp) -> None:
    data = build_dataset(cfg)
    model = build_model(cfg, data)
    arrays, start_round = _starting_point(cfg, files, ArrayRecord(model.state_dict()))
    stack = build_transport(cfg, None)
    progress.emit("start", rounds=cfg.num_server_rounds, first=start_round, stack=stack.name)
    if start_round >= cfg.num_server_rounds:
        log(INFO, "%s nothing to do: %d of %d rounds done", PROGRESS_TAG, start_round, cfg.num_server_rounds)
        return

    guard_ref: list[InstrumentedStrategy] = []
    metered = MeteredGrid(grid, on_replies=lambda phase, got, want: progress.emit(
        "replies", round=start_round + guard_ref[0].current_round, phase=phase, received=got, expected=want))
    _wait_for_nodes(metered, cfg.min_nodes)
    planner = None
    if cfg.uses_transport("qcn") and cfg.qcn_topology:  # the shared network's predictions, made while the nodes warm up
        from transport.qcn_schedule import Planner

        planner = Planner.from_run_config(cfg)
        log(INFO, "%s qcn-topology %s: predictions of its routes made in %.2f s", PROGRESS_TAG, cfg.qcn_topology,
            planner.prepare(range(cfg.min_nodes)))
    late = warm_up.wait(cfg.warm_up_timeout)  # round-timeout counts from here: a node still starting is no straggler
    metered.partition_of.update(warm_up.partitions)
    progress.emit("ready", nodes=len(list(metered.get_node_ids())), warm_up_s=round(warm_up.seconds, 3),
                  last_node_ready=max(warm_up.ready_at.values(), default=None),
                  not_warm=late, refused={str(n): why for n, why in warm_up.refused.items()})
    inner, central_dp, reply_arrays = server_strategy(cfg)
    ledger = _privacy_ledger(cfg, files, start_round)
    sizes = PartitionSizes(cfg, data)
    sizes.bound.update(warm_up.partitions)  # what each node named first: at the warm-up
    norm_factor, examples_factor, direction = guard_screens(cfg)
    if not direction and cfg.robust_direction:
        log(INFO, "%s the guard's cross-client screens are off (%s)", PROGRESS_TAG,
            "secure aggregation: the server sees only the sum" if cfg.uses_transport("secagg")
            else "central DP: clipping bounds each client")
    if cfg.uses_transport("secagg"):  # one reply, the aggregate: nothing per client to check
        schema, bounds = ReplySchema(metrics=frozenset((NUM_EXAMPLES, SECAGG_SUMMED, SECAGG_DROPPED))), None
    else:
        schema = train_reply_schema(stack.reply_metrics, stack.reply_configs, reply_arrays, stack.withheld_metrics)
        # the nodes' own files: the server knows no partition's size (the examples cap still holds each claim)
        bounds = None if cfg.dataset == "file" else sizes
    path_fidelity = PathFidelity(cfg, sizes.bound) if cfg.uses_transport("qcn") else None
    guard = InstrumentedStrategy(inner, schema, norm_factor, examples_factor, bounds, direction, path_fidelity)
    guard_ref.append(guard)
    # strategy -> transport -> wire: the transport encodes what the metered grid sends
    wire = TransportGrid(metered, stack, context.run_id, lambda: guard.current_round) if stack.transports else None
    top = wire
    if cfg.uses_transport("secagg"):  # strategy -> secure aggregation -> transport -> wire
        connected = len(list(metered.get_node_ids()))
        # B, the public bound on a weight: the largest partition; with the nodes' own files the server knows no
        # size, and B = 1 weighs every node alike (a = min(n, B) / B = 1)
        top = SecAggGrid(wire, cfg, weight_bound=max(sizes.sizes(connected) or [max(len(data.y_train), 1)]), keys=warm_up.secagg_keys)
        if central_dp is None and ledger is not None:  # distributed DP: the rounds' samples are secure aggregation's
            central_dp = top
    schedule = None
    if planner is not None:  # strategy -> the network's plan -> transport -> wire
        from transport.qcn_schedule import ScheduleGrid

        connected = len(list(metered.get_node_ids()))
        top = schedule = ScheduleGrid(top, planner, sizes.bound.get, lambda p: sizes.size_of(p, connected))
        path_fidelity.schedule = schedule
    on_round = RoundRecorder(cfg, start_round, model, data, files, guard, metered, wire, ledger, central_dp, progress, sinks,
                             schedule, top if isinstance(top, SecAggGrid) else None)
    log(INFO, "%s transport: %s", PROGRESS_TAG, stack.name if stack.transports else "plain")
    guard.start(
        grid=top or metered,
        initial_arrays=arrays,
        num_rounds=cfg.num_server_rounds - start_round,
        timeout=cfg.round_timeout,
        train_config=ConfigRecord({ROUND_OFFSET: start_round}),
        evaluate_config=ConfigRecord({ROUND_OFFSET: start_round}),
        evaluate_fn=on_round,
    )


class WarmUp:
    """The warm-up query to every connected node, and the wait for its answers.

    A node answers once its ClientApp runs and (warm runtime) its worker has built the
    task: data partition, model, device. :meth:`push` sends the query before the server
    builds its own model, so both overlap; :meth:`wait` blocks round 1 until every node
    answered or ``warm-up-timeout`` passed. ``round-timeout`` then counts from a moment
    when each node can answer, so a node still starting on a slow machine is not dropped
    as a straggler in round 1. Each answer names the node's partition
    (:attr:`partitions`): the grid then lists the nodes by partition, so that the seeded
    sample of a round picks the same partitions in every run whatever IDs the nodes got,
    and the guard binds each node to the partition it named here. On qfl's experiment
    engine no node is asked: the engine's own node map gives the same list
    (:func:`_engine_partitions`), which at 10,000 nodes saves minutes a run.
    """

    def __init__(self, grid: Grid, sent: dict[str, int]) -> None:
        self.grid, self.sent = grid, sent  # message ID -> node
        self.started, self.pushed_at = time.monotonic(), time.time()
        self.seconds = 0.0
        self.ready_at: dict[int, float] = {}  # node -> when its answer came (time.time())
        self.partitions: dict[int, int] = {}  # node -> the partition it named
        self.refused: dict[int, str] = {}  # node -> why it refused to take part (e.g. its data file is unusable)
        self.secagg_keys: dict[int, ConfigRecord] = {}  # node -> its signed keys for secure aggregation (secagg)

    @classmethod
    def push(cls, grid: Grid, cfg: RunConfig, state: RecordDict | None = None) -> WarmUp:
        _wait_for_nodes(grid, cfg.min_nodes)
        # qfl's experiment engine knows every simulated node's partition: no roll call of thousands of
        # nodes (nothing to warm on the simulation engine); secure aggregation still needs each node's key
        known = None if cfg.uses_transport("secagg") else _engine_partitions(grid, state, cfg.warm_up_timeout)
        if known is not None:
            warm_up = cls(grid, {})
            warm_up.partitions.update(known)
            return warm_up
        nodes = list(grid.get_node_ids())
        ids = grid.push_messages([Message(RecordDict(), dst_node_id=n, message_type=WARM_UP_TYPE) for n in nodes])
        return cls(grid, {i: n for i, n in zip(ids, nodes) if i})

    def wait(self, timeout: float) -> list[int]:
        """Block until every node answered or ``timeout`` s after :meth:`push`; the nodes that did not."""
        pending, end = set(self.sent), self.started + timeout
        while pending and time.monotonic() < end:
            for reply in self.grid.pull_messages(pending):
                pending.discard(reply.metadata.reply_to_message_id)
                node = self.sent.get(reply.metadata.reply_to_message_id)
                self.ready_at[node] = time.time()
                if reply.has_error():
                    log(WARNING, "%s warm-up: node %s refused: %s", PROGRESS_TAG, node, reply.error.reason)
                    if node is not None:
                        self.refused[node] = reply.error.reason
                elif node is not None:
                    if (partition := device_claim(reply)[0]) is not None:
                        self.partitions[node] = partition
                    if (keys := reply.content.config_records.get(SECAGG_RECORD)) is not None:
                        self.secagg_keys[node] = keys
            if pending:
                time.sleep(NODE_WAIT_POLL_S)
        self.seconds = time.monotonic() - self.started
        late = sorted(self.sent[i] for i in pending)
        if self.sent:
            log(INFO, "%s warm-up: %d of %d node(s) ready after %.1f s", PROGRESS_TAG, len(self.sent) - len(late),
                len(self.sent), self.seconds)
        if late:
            log(WARNING, "%s warm-up: no answer from node(s) %s within warm-up-timeout (%.0f s): round 1 goes on "
                "without waiting for them", PROGRESS_TAG, late, timeout)
        return late


def _starting_point(cfg: RunConfig, files: RunRecorder, fresh: ArrayRecord) -> tuple[ArrayRecord, int]:
    """The initial parameters and the rounds already done: the newest intact checkpoint when resuming."""
    if not cfg.resume:
        return fresh, 0
    latest = files.load_latest(cfg.num_server_rounds)
    if latest is None:
        log(WARNING, "%s resume: no checkpoint in %s, starting fresh", PROGRESS_TAG, files.run_dir)
        return fresh, 0
    for name, why in latest.skipped:
        log(WARNING, "%s resume: skipped checkpoint %s: %s", PROGRESS_TAG, name, why)
    _check_compatible(latest.arrays, fresh)
    log(INFO, "%s resuming from round %d (%s)", PROGRESS_TAG, latest.server_round, latest.path)
    return latest.arrays, latest.server_round


def _privacy_ledger(cfg: RunConfig, files: RunRecorder, start_round: int) -> LocalDPLedger | CentralDPLedger | None:
    if not cfg.uses_transport("dp"):
        return None
    ledger = (LocalDPLedger if cfg.dp_mode == "local" else CentralDPLedger)(cfg.dp_noise_multiplier, cfg.dp_delta, cfg.dp_accountant)
    if start_round > 0:
        state = files.load_privacy()
        if state is None:
            raise RunFailed(f"cannot resume a DP run without its privacy ledger ({files.privacy_path}): epsilon would restart from zero")
        ledger.load(state)
    mode = "distributed: each node adds its share of the noise" if cfg.uses_transport("secagg") else cfg.dp_mode
    log(INFO, "%s DP (%s): clip %.3g, noise multiplier %.3g, delta %.1e, %s accountant",
        PROGRESS_TAG, mode, cfg.dp_clip, cfg.dp_noise_multiplier, cfg.dp_delta, cfg.dp_accountant)
    return ledger


class PathFidelity:
    r"""The server's own estimate of the fidelity each ``qcn`` reply's link delivers.

    The server knows the network: the run config's ``qcn-paths`` give partition *p* path
    ``p mod n``. For the partition a node is bound to (:class:`PartitionSizes`), it sends
    an update of the reply's size over that path itself, :data:`ESTIMATE_REPEATS` times with
    its own draws (:func:`transport.qcn.transmit`, the node's own simulation), and takes
    the mean fidelity :math:`\hat F` and a tolerance
    :math:`\tau = \max(0.01, 4\,\mathrm{sd})`. A claim above :math:`\hat F + \tau` is
    named and replaced by :math:`\hat F` (:func:`~strategies.validation.clip_fidelity`).
    A node on a path of its own (node config ``qcn-path``) better than its partition's is
    then counted at its partition's: the server weighs what it can check. Over a shared
    network (``qcn-topology``) the estimate is the prediction for the route and setting the
    server's own plan gave the node that round
    (:meth:`~transport.qcn_schedule.Planner.fidelity_estimate`).
    """

    ESTIMATE_REPEATS = 8

    def __init__(self, cfg: RunConfig, bound: dict[int, int]) -> None:
        self.cfg, self.bound = cfg, bound
        self.schedule = None  # over a shared network (qcn-topology): the ScheduleGrid whose plan each node got
        self._cache: dict[tuple[str, int], tuple[float, float]] = {}

    def estimate(self, spec: str, values: int) -> tuple[float, float]:
        import numpy as np

        from transport.qcn import get_path, transmit

        if (spec, values) not in self._cache:
            # the server's own draws, not the node's; seeded, so that a run stays a function of its
            # config (what they estimate, a path's mean fidelity, is no secret)
            rng = np.random.default_rng([self.cfg.seed, values, 0xF1DE])
            path = get_path(spec)
            f = [transmit(np.ones(values), path, self.cfg.qcn_copies, rng, self.cfg.qcn_channels).fidelity
                 for _ in range(self.ESTIMATE_REPEATS)]
            self._cache[(spec, values)] = (float(np.mean(f)), max(0.01, 4 * float(np.std(f))))
        return self._cache[(spec, values)]

    def __call__(self, replies: list[Message]) -> list[tuple[float, float] | None]:
        specs = self.cfg.path_specs()
        out: list[tuple[float, float] | None] = []
        for msg in replies:
            partition = self.bound.get(msg.metadata.src_node_id)
            arrays = next(iter(msg.content.array_records.values()), None) if not msg.has_error() else None
            if partition is None or arrays is None:
                out.append(None)
                continue
            values = sum(int(a.numpy().size) for a in arrays.values())
            if self.schedule is not None:  # the route and setting the server's plan gave this node
                decision = self.schedule.decision_of(msg.metadata.src_node_id)
                out.append(None if decision is None else self.schedule.planner.fidelity_estimate(decision))
                continue
            out.append(self.estimate(specs[partition % len(specs)], values))
        return out


def _engine_partitions(grid: Grid, state: RecordDict | None, timeout: float) -> dict[int, int] | None:
    """Each connected node's partition as the simulation engine assigned it, where qfl's experiment
    engine puts its node map into the ServerApp's state (:data:`SIMULATION_PARTITIONS`, filled once the
    engine registered its nodes); ``None`` without one, or if within ``timeout`` s it does not name every
    connected node (the warm-up then asks them)."""
    if state is None or SIMULATION_PARTITIONS not in state.config_records:
        return None
    end = time.monotonic() + timeout
    while True:
        record, nodes = state.config_records[SIMULATION_PARTITIONS], list(grid.get_node_ids())
        if record and all(str(n) in record for n in nodes):
            return {n: int(record[str(n)]) for n in nodes}
        if time.monotonic() >= end:
            log(WARNING, "%s the engine's node map names not every node within %.0f s: asking them", PROGRESS_TAG, timeout)
            return None
        time.sleep(NODE_WAIT_POLL_S)


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


class PartitionSizes:
    """How many examples each reply can really hold: its partition's size, rebuilt from the seed.

    A reply claims its ``partition-id``; the number of partitions is the one most of the
    round's replies claim, so one client cannot choose a coarser split to look bigger. A
    node is bound to the partition it named first: a later reply that names another, and
    every reply of a round that names a partition another node of the same round names,
    gets no bound (the guard then counts it as the round's smallest, and names it), so no
    node can take a larger partition's size by claiming it. A claim that fits no partition
    gets no bound either.
    """

    def __init__(self, cfg: RunConfig, data) -> None:  # noqa: ANN001
        self.cfg, self.data = cfg, data
        self._sizes: dict[int, list[int]] = {}
        self.bound: dict[int, int] = {}  # node ID -> the partition it named first

    def size_of(self, partition: int, num_partitions: int) -> int | None:
        """The examples of ``partition`` of ``num_partitions`` (``None`` if there is no such one)."""
        sizes = self.sizes(num_partitions)
        return sizes[partition] if sizes is not None and 0 <= partition < len(sizes) else None

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
        claims = [device_claim(m) for m in replies]
        counts = Counter(num for _, num in claims if num is not None)
        if not counts:
            return [None] * len(replies)
        num = counts.most_common(1)[0][0]
        sizes = self.sizes(num)
        named = Counter(pid for pid, _ in claims if pid is not None)
        out: list[float | None] = []
        for msg, (pid, _) in zip(replies, claims):
            node = msg.metadata.src_node_id
            if pid is not None and named[pid] > 1:
                log(WARNING, "node %d names partition %d, as another node of this round does: neither is sized", node, pid)
                pid = None
            elif pid is not None and self.bound.setdefault(node, pid) != pid:
                log(WARNING, "node %d names partition %d, but named %d first: not sized", node, pid, self.bound[node])
                pid = None
            out.append(float(sizes[pid]) if sizes is not None and pid is not None and 0 <= pid < num else None)
        return out
