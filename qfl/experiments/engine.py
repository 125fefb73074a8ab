"""Many runs on Flower's simulation engine with one Ray instance and one pool of workers.

Flower's own path for a simulation run (``flwr run`` to a ``flower-superlink --simulation``)
starts a fresh ``flwr-simulation`` process per run, which starts Ray, builds a pool of
Ray actors (each imports the ClientApp, torch and PennyLane) and shuts Ray down at the
end (``RayBackend.terminate`` calls ``ray.shutdown()``). On this 2-core machine that is
10-15 s per run before the first round, more than a whole 20-round run of a small
model: an experiment of 10 seeds x 20 arms would spend most of its time starting Ray.

Flower allows a Ray instance that is already running: ``RayBackend.init_ray`` joins it
instead of starting one. So a :class:`SimulationSession` runs every run of an experiment
in this process, through the same entry point ``flwr-simulation`` uses
(``flwr.simulation.run_simulation._run_simulation``, with the app directory, the run's
config fused with ``pyproject.toml`` exactly as ``flwr run --run-config`` does, and Flower's
own ServerApp/ClientApp loading), and gives the runtime a :class:`KeptRayBackend`: Flower's
``RayBackend`` whose pool of actors is built once and whose ``terminate`` leaves Ray up.
The session shuts both down when it ends. Results cannot depend on this: every client
message reloads the parameters and reseeds every draw (:mod:`client.local`), and
``tests/tooling_tests/test_experiments.py`` checks that the same run twice in one session gives the
same curve. Both hooks are internals of flwr 1.42 (pinned in ``pyproject.toml``); the
smoke test fails loudly if an upgrade moves them.

At thousands of simulated nodes two more: the runtime's message extractor walks its link state
once a sweep instead of once per node (:func:`~qfl.common.flower_internals.linear_message_extractor`),
and the node map it registers (node ID -> partition) goes into the ServerApp's context state, so
that the warm-up lists the nodes by partition without asking each one (``server/app.py``).

**A Ray cluster.** ``ray_address`` (``qfl experiment --ray-address``), else Ray's own
``RAY_ADDRESS``, makes the session join a running cluster (``ray start``) instead of starting
Ray here: Flower's pool then puts its actors on every node that has the CPUs a client asks for.
The project must be installed at the same path on every node (the actors import it through
``PYTHONPATH``). The session measures the peak memory of this process and its descendants
(:class:`PeakMemory`): with a local Ray that is Ray's processes and actors too; on a cluster
only the driver.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from qfl.common.config import KEY
from qfl.common.contract import CACHE_DIR_ENV, SIMULATION_PARTITIONS
from qfl.common.flower_internals import (
    linear_message_extractor,
    published_node_partitions,
    serialized_ast_parse,
    set_task_identity,
    simulation_internals,
)
from qfl.launch.config import RAY_ADDRESS_ENV

PROJECT_DIR = Path(__file__).resolve().parents[2]


class RunError(RuntimeError):
    """A run of an experiment failed; the message says which and why."""


def _kept_ray_backend():  # noqa: ANN202 (the class is made lazily: Ray is an optional extra)
    class KeptRayBackend(simulation_internals().RayBackend):
        """Flower's ``RayBackend`` with one pool of actors for every run of a session."""

        pool_of_session = None

        def build(self, app_fn):  # noqa: ANN001, ANN201
            pool = type(self).pool_of_session
            # reuse the pool only if every actor is back (a run that crashed may hold one)
            if pool is not None and len(pool.pool) == pool.num_actors and pool.num_actors > 0:
                self.pool, self.app_fn = pool, app_fn
                return
            if pool is not None:
                pool.terminate_all_actors()
            super().build(app_fn)
            type(self).pool_of_session = self.pool

        def terminate(self) -> None:
            """Leave the actors and Ray up: the session ends them (:func:`kept_ray`)."""

    return KeptRayBackend


def ray_address_of(address: str | None = None) -> str | None:
    """The Ray cluster to join: ``address``, else ``$RAY_ADDRESS``, else ``None`` (start Ray here)."""
    return address or os.environ.get(RAY_ADDRESS_ENV) or None


@contextlib.contextmanager
def kept_ray(num_cpus: int | None = None, address: str | None = None, linear_extractor: bool = True) -> Iterator[None]:
    """Start Ray once (or join the cluster at ``address``, see :func:`ray_address_of`) and keep
    Flower's simulation runtime on it (and on one pool of actors) until the block ends; then
    stop both (on a cluster: end the actors and disconnect) and restore Flower's backend."""
    import ray

    raybackend = simulation_internals().raybackend
    original = raybackend.RayBackend
    kept = _kept_ray_backend()
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    pythonpath = os.pathsep.join([str(PROJECT_DIR), *sys.path])
    address = ray_address_of(address)
    if address is not None and num_cpus is not None:
        raise ValueError("num_cpus is the cluster's to set (ray start --num-cpus), not a session's that joins it")
    ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, logging_level=logging.ERROR,
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": pythonpath, **_client_env()}})
    raybackend.RayBackend = kept
    try:
        with linear_message_extractor() if linear_extractor else contextlib.nullcontext():
            yield
    finally:
        raybackend.RayBackend = original
        if kept.pool_of_session is not None:
            kept.pool_of_session.terminate_all_actors()
            kept.pool_of_session = None
        ray.shutdown()


def _client_env() -> dict[str, str]:
    """What the actors inherit: the data cache, and no telemetry (no internet here)."""
    keep = (CACHE_DIR_ENV, "FLWR_TELEMETRY_ENABLED")
    return {k: os.environ[k] for k in keep if k in os.environ}


class SimulationSession:
    """Runs of one app on Flower's simulation engine, all on one Ray instance.

    Examples
    --------
    ::

        with SimulationSession() as session:
            session.run({"dataset": "iris", "num-server-rounds": 5, "output-dir": "out", "run-name": "a"}, clients=4)
    """

    def __init__(self, app_dir: Path = PROJECT_DIR, cpus_per_client: float = 1.0, num_cpus: int | None = None,
                 ray_address: str | None = None, engine_node_map: bool = True, linear_extractor: bool = True) -> None:
        self.app_dir = Path(app_dir).resolve()
        self.backend_config = {
            "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
            "init_args": {"logging_level": logging.ERROR, "log_to_driver": False},
        }
        self.num_cpus = num_cpus
        self.ray_address = ray_address
        # False: the ServerApp asks every node its partition (the warm-up's roll call), as on
        # `qfl launch --simulation`; the same node order either way (tested)
        self.engine_node_map = engine_node_map
        self.linear_extractor = linear_extractor  # False: Flower's own (a sweep per node; the benchmark's baseline)
        self.memory = PeakMemory()
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> SimulationSession:
        os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
        serialized_ast_parse()  # the ServerApp's and the engine's threads both parse the app as a run starts
        self._stack = contextlib.ExitStack()
        if (address := ray_address_of(self.ray_address)) is not None:
            self.memory.scope = f"PSS of the experiment's process only: its clients ran on the Ray cluster at {address}"
        self._stack.enter_context(self.memory)
        self._stack.enter_context(kept_ray(self.num_cpus, self.ray_address, self.linear_extractor))
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stack is not None
        self._stack.close()

    def run(self, run_config: dict[str, object], clients: int, client_app: str | None = None) -> float:
        """One run with ``run_config`` (keys of ``[tool.flwr.app.config]``) on ``clients``
        virtual SuperNodes, running ``client_app`` (``module:attr``; default: the project's
        ClientApp component); its seconds. The ServerApp writes the run's files as usual.

        Raises
        ------
        RunError
            The ServerApp failed (its exception is the cause).
        """
        from flwr.app import ConfigRecord, Context, RecordDict

        flwr = simulation_internals()
        components = flwr.get_project_config(self.app_dir)["tool"]["flwr"]["app"]["components"]
        run = flwr.Run.create_empty(run_id=flwr.generate_rand_int_from_bytes(8))
        run.override_config = dict(run_config)
        run.federation_id = flwr.NOOP_FEDERATION_ID
        run.primary_task_id = flwr.generate_rand_int_from_bytes(8)
        # the ServerApp's messages leave from the SuperLink's node, as in flwr-simulation
        set_task_identity(run.primary_task_id, run.run_id, flwr.SUPERLINK_NODE_ID)
        context = Context(run_id=run.run_id, node_id=flwr.SUPERLINK_NODE_ID, node_config={}, state=RecordDict(),
                          run_config=flwr.get_fused_config_from_dir(self.app_dir, run.override_config))
        node_map = contextlib.nullcontext()
        if self.engine_node_map:  # an empty record: the ServerApp waits for the map, which registering fills
            context.state[SIMULATION_PARTITIONS] = ConfigRecord()
            node_map = published_node_partitions(context.state, SIMULATION_PARTITIONS)
        start = time.perf_counter()
        try:
            with node_map:
                flwr.run_simulation(
                    num_supernodes=clients,
                    exit_event=flwr.leave_event,
                    server_app_attr=components["serverapp"],
                    client_app_attr=client_app or components["clientapp"],
                    backend_name="ray",
                    backend_config=json.loads(json.dumps(self.backend_config)),
                    app_dir=str(self.app_dir),
                    run=run,
                    server_app_context=context,
                    is_app=True,
                )
        except Exception as err:  # noqa: BLE001 (any failure of a run is reported with its cause)
            raise RunError(f"{run_config.get(KEY.run_name, '')}: {type(err).__name__}: {err}") from err
        return time.perf_counter() - start


class PeakMemory:
    """The peak memory of this process and its descendants while the block runs, sampled every
    ``interval`` s: the sum of each process's proportional set size (PSS: a page shared by k
    processes counts 1/k in each, so Ray's shared object store and shared libraries count once),
    resident size where PSS cannot be read. A local Ray's GCS, raylet and workers, the actors
    among them, are this process's descendants; a cluster's are not."""

    LOCAL = "PSS of the experiment's process, its Ray processes and actors"

    def __init__(self, interval: float = 0.5, scope: str = LOCAL) -> None:
        self.interval = interval
        self.scope = scope  # what the peak covers, in words
        self.peak_bytes = 0  # the whole tree's peak
        self.peak_driver_bytes = 0  # this process's own (the ServerApp, the runtime's link state and nodes)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def sample() -> tuple[int, int]:
        """The memory of this process tree now, and of this process alone, in bytes."""
        import psutil

        me = psutil.Process()
        total = own = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                info = proc.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            size = getattr(info, "pss", info.rss)
            total += size
            own = size if proc.pid == me.pid else own
        return total, own

    def _update(self) -> None:
        total, own = self.sample()
        self.peak_bytes, self.peak_driver_bytes = max(self.peak_bytes, total), max(self.peak_driver_bytes, own)

    def reset(self) -> None:
        """Start a new peak from now (the next run's own)."""
        self.peak_bytes = self.peak_driver_bytes = 0
        self._update()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self._update()

    def __enter__(self) -> PeakMemory:
        self.reset()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="qfl-peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._update()
