"""Where else a run's metrics go, if asked (``log-to``): TensorBoard and MLflow.

Both packages are optional: asking for one that is not installed is an error before the
run starts, naming the key and the package to install.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Protocol

from qfl.common.config import KEY, ConfigError, RunConfig

PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow-skinny sqlalchemy alembic"}  # what to pip install


class MetricSink(Protocol):
    def log_round(self, server_round: int, row: dict[str, object]) -> None: ...

    def close(self) -> None: ...


def check_sinks(cfg: RunConfig) -> None:
    """Each sink ``log-to`` names must be importable; :class:`ConfigError` otherwise."""
    import importlib.util

    for name in cfg.sinks_of(cfg.log_to):
        module = "tensorboard" if name == "tensorboard" else "mlflow"
        if importlib.util.find_spec(module) is None:
            raise ConfigError(KEY.log_to, f"{name} is not installed: pip install {PACKAGES[name]} (or pip install 'qfl[tracking]')")


def open_sinks(cfg: RunConfig, run_dir: Path) -> list[MetricSink]:
    check_sinks(cfg)
    sinks: list[MetricSink] = []
    for name in cfg.sinks_of(cfg.log_to):
        sinks.append(TensorBoardSink(run_dir) if name == "tensorboard" else MLflowSink(cfg, run_dir))
    return sinks


def _numbers(row: dict[str, object]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and k != "round"}


class TensorBoardSink:
    """Scalars under ``<run>/tensorboard`` (``tensorboard --logdir runs``)."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log_round(self, server_round: int, row: dict[str, object]) -> None:
        for key, value in _numbers(row).items():
            self.writer.add_scalar(key, value, server_round)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowSink:
    """One MLflow run per federated run: the configuration as parameters, every round's
    row as metrics at its step. Tracking URI: ``$MLFLOW_TRACKING_URI``, else the SQLite
    store ``<run>/mlflow.db`` (``mlflow ui --backend-store-uri sqlite:///<run>/mlflow.db``)."""

    def __init__(self, cfg: RunConfig, run_dir: Path) -> None:
        import mlflow

        self.mlflow = mlflow
        run_dir.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}")
        mlflow.set_experiment("qfl")
        self.run = mlflow.start_run(run_name=run_dir.name)
        mlflow.log_params({k: str(v)[:500] for k, v in cfg.to_run_config().items()})

    def log_round(self, server_round: int, row: dict[str, object]) -> None:
        self.mlflow.log_metrics(_numbers(row), step=server_round)

    def close(self) -> None:
        self.mlflow.end_run()
