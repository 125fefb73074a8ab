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
same curve. Both hooks are internals of flwr 1.41 (pinned in ``pyproject.toml``); the
smoke test fails loudly if an upgrade moves them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from qfl.common.config import KEY
from qfl.common.contract import CACHE_DIR_ENV
from qfl.common.flower_internals import set_task_identity, simulation_internals

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


@contextlib.contextmanager
def kept_ray(num_cpus: int | None = None) -> Iterator[None]:
    """Start Ray once and keep Flower's simulation runtime on it (and on one pool of
    actors) until the block ends; then stop both and restore Flower's backend."""
    import ray

    raybackend = simulation_internals().raybackend
    original = raybackend.RayBackend
    kept = _kept_ray_backend()
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    pythonpath = os.pathsep.join([str(PROJECT_DIR), *sys.path])
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath, **_client_env()}})
    raybackend.RayBackend = kept
    try:
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

    def __init__(self, app_dir: Path = PROJECT_DIR, cpus_per_client: float = 1.0, num_cpus: int | None = None) -> None:
        self.app_dir = Path(app_dir).resolve()
        self.backend_config = {
            "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
            "init_args": {"logging_level": logging.ERROR, "log_to_driver": False},
        }
        self.num_cpus = num_cpus
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> SimulationSession:
        os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(kept_ray(self.num_cpus))
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
        from flwr.app import Context, RecordDict

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
        start = time.perf_counter()
        try:
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
