"""Flower Datasets' partitioners, by name, over a data set's labels.

``partitioner = "flower:<Class>"`` or ``"flower:<Class>:option=value,..."`` splits the training
rows with ``flwr_datasets.partitioner.<Class>`` (``IidPartitioner``, ``DirichletPartitioner``,
``PathologicalPartitioner``, ``ShardPartitioner``, ``LinearPartitioner``, ...): the labels go in
as an in-memory ``datasets.Dataset``, the partitioner gets ``num_partitions``, and, where its
constructor takes them, ``partition_by = "label"`` and the run's ``seed``; the options are its
other arguments (dashes read as underscores; numbers, ``true``/``false``, else text). The project's own
``iid``, ``dirichlet`` and ``h-range`` stay as they were, so the experiments that use them keep
their numbers.
"""

from __future__ import annotations

import inspect
import os

import numpy as np

PREFIX = "flower:"


def is_flower(name: str) -> bool:
    return name.startswith(PREFIX)


def parse(spec: str) -> tuple[str, dict[str, object]]:
    """``"flower:Class:a=1,b-c=x"`` -> ``("Class", {"a": 1, "b_c": "x"})``."""
    body = spec[len(PREFIX):]
    name, _, rest = body.partition(":")
    options: dict[str, object] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"partitioner {spec!r}: option {item!r} is not key=value")
        options[key.strip().replace("-", "_")] = _value(value.strip())
    return name.strip(), options


def _value(text: str) -> object:
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def flower_partitions(labels: np.ndarray, num_partitions: int, spec: str, seed: int) -> list[np.ndarray]:
    """The sorted row indices of each partition that Flower Datasets' partitioner ``spec`` cuts.

    Raises
    ------
    ValueError
        Flower Datasets is not installed, the class is not one of its partitioners, an option
        does not suit its constructor, or the partitioner cannot split these labels.
    """
    name, options = parse(spec)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # an in-memory data set: nothing to fetch
    try:
        import flwr_datasets.partitioner as partitioners
        from datasets import Dataset
    except ImportError:
        raise ValueError(f"partitioner {spec!r} needs Flower Datasets: pip install 'qfl[data]'") from None
    cls = getattr(partitioners, name, None)
    if not (isinstance(cls, type) and issubclass(cls, partitioners.Partitioner)) or name == "Partitioner":
        known = sorted(n for n in dir(partitioners) if n.endswith("Partitioner") and n != "Partitioner")
        raise ValueError(f"partitioner {spec!r}: Flower Datasets has no partitioner {name!r} (choose from {', '.join(known)})")
    params = inspect.signature(cls).parameters
    kwargs = dict(options)
    if "partition_by" in params:
        kwargs.setdefault("partition_by", "label")
    if "seed" in params:  # not a contract name: the partitioner's own argument
        kwargs.setdefault("seed", seed)  # not a contract name: the partitioner's own argument
    try:
        partitioner = cls(num_partitions=num_partitions, **kwargs)
        partitioner.dataset = Dataset.from_dict({"label": np.asarray(labels).tolist(), "row": list(range(len(labels)))})
        return [np.sort(np.asarray(partitioner.load_partition(i)["row"], dtype=np.int64)) for i in range(num_partitions)]
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(f"partitioner {spec!r}: {err}") from None
