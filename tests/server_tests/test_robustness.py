"""No client can crash, poison or hide in a run: a malicious client against the server's guard.

The federation runs in this process with the real pieces: the real ClientApp (``client.app``)
trains three iris partitions; the real strategies aggregate behind the server's real guard
(:class:`server.instrumented.InstrumentedStrategy`, as ``server.app`` builds it). One client
(partition 0) is malicious: it trains honestly, then corrupts its reply the way a hostile
ClientApp would. For every attack and strategy the run finishes, the attacker is named, and
the final accuracy stays within :data:`MARGIN` of the same federation unharmed: the lower of
its clean run and the run without the attacker's node (what a rejected attacker leaves). A real deployment with a malicious ClientApp is in ``test_integration.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from helpers import InProcessFederation

from qfl.common.contract import ROUND_CLIENTS_CAPPED, ROUND_CLIENTS_REJECTED, ROUND_CLIENTS_TRIMMED

ROUNDS = 4
CLIENTS = 3
MALICIOUS = 1  # node ID of partition 0
MARGIN = 0.08  # final accuracy within 8 points (3 test samples of 38) of the clean run


def _array_with_data(template: np.ndarray, data: np.ndarray) -> Array:
    """An Array that *declares* ``template``'s shape but carries ``data``'s bytes."""
    import io

    buf = io.BytesIO()
    np.save(buf, data, allow_pickle=False)
    return Array(dtype=str(template.dtype), shape=tuple(template.shape), stype="numpy.ndarray", data=buf.getvalue())


def _corrupt(kind: str, reply: Message) -> Message:
    """What a hostile ClientApp sends instead of its honest ``reply``."""
    content = RecordDict(dict(reply.content.items()))
    arrays = {k: v.numpy() for k, v in reply.content["arrays"].items()}
    metrics = dict(reply.content["metrics"])
    if kind == "scaled":
        content["arrays"] = ArrayRecord({k: Array(v * 1e6) for k, v in arrays.items()})
    elif kind == "inflated-examples":
        # a free rider that claims all the data in the world: it sends back the model it
        # got, which uncapped would freeze FedAvg at the initial model
        sent = _request_of[reply.metadata.reply_to_message_id].content["arrays"]
        metrics["num-examples"] = 1e9
        content["arrays"] = ArrayRecord({k: Array(v.numpy()) for k, v in sent.items()})
    elif kind == "near-copy":
        # the same free rider, who hides its copy under noise far below any honest update
        sent = _request_of[reply.metadata.reply_to_message_id].content["arrays"]
        rng = np.random.default_rng(0)
        metrics["num-examples"] = 1e9
        content["arrays"] = ArrayRecord({k: Array(v.numpy() + 1e-9 * rng.normal(size=v.numpy().shape).astype(v.numpy().dtype))
                                         for k, v in sent.items()})
    elif kind == "no-partition":
        # trains honestly, names no partition the server could size, claims all the data
        metrics["num-examples"] = 1e9
        content["device"] = ConfigRecord({k: v for k, v in reply.content["device"].items() if k != "partition-id"})
    elif kind == "spoofed-shape":
        content["arrays"] = ArrayRecord({k: _array_with_data(v, np.zeros(7)) for k, v in arrays.items()})
    elif kind == "extra-key":
        metrics["evil"] = 1.0
    elif kind == "missing-key":
        del metrics["train-loss"]
    elif kind == "second-record":
        content["arrays-2"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    elif kind == "complex":
        content["arrays"] = ArrayRecord({k: Array(v.astype(np.complex128) * (1 + 1j)) for k, v in arrays.items()})
    elif kind == "nan":
        content["arrays"] = ArrayRecord({k: Array(np.full_like(v, np.nan)) for k, v in arrays.items()})
    elif kind == "inf":
        content["arrays"] = ArrayRecord({k: Array(np.full_like(v, -np.inf)) for k, v in arrays.items()})
    elif kind == "huge":
        content["arrays"] = ArrayRecord({k: Array(np.full_like(v, 1e300)) for k, v in arrays.items()})
    else:
        raise ValueError(kind)
    content["metrics"] = MetricRecord(metrics)
    out = Message(content=content, reply_to=_request_of[reply.metadata.reply_to_message_id])
    return out


ATTACKS = ["scaled", "inflated-examples", "near-copy", "no-partition", "spoofed-shape", "extra-key", "missing-key",
           "second-record", "complex", "nan", "inf", "huge"]
STRATEGIES = ["fedavg", "noise-isolating", "fedmedian"]
# attacks a cap alone would also name: the guard must name them for what they are
NAMED_AS = {"near-copy": "rejected: returned the global model all but unchanged",
            "no-partition": "capped: claimed 1e+09 examples with no partition bound to it to check them against"}
_request_of: dict[str, Message] = {}  # the federation's requests, by message ID (what an attacker answers)


def _federation(defaults, strategy: str, attack: str | None) -> tuple[float, list[dict], list[dict]]:
    """Final central accuracy, per-round stats and per-client rows of one in-process run."""
    run_config = {**defaults, "dataset": "iris", "local-epochs": 3, "learning-rate": 0.1, "strategy": strategy}

    def corrupt(node: int, reply: Message) -> Message:
        if attack == "absent" and node == MALICIOUS:  # the control: the attacker's node answers with an error
            from flwr.app import Error

            return Message(Error(code=0, reason="absent"), reply_to=_request_of[reply.metadata.reply_to_message_id])
        return _corrupt(attack, reply) if attack and node == MALICIOUS else reply

    fed = InProcessFederation(run_config, CLIENTS, corrupt)
    global _request_of
    _request_of = fed.requests
    fed.run(ROUNDS)
    return fed.accuracy[-1], fed.stats, fed.rows


@pytest.fixture(scope="module")
def clean():
    """What each strategy reaches unharmed, computed once: the lower of its clean run and of
    the run without the attacker's node (its reply an error). A rejected attacker takes its
    partition out of the federation, and no guard can do better than the federation
    without it: with three iris clients that alone may cost more than the margin."""
    from qfl.common.config import defaults as app_defaults
    from qfl.common.flower_internals import task_identity

    with task_identity():  # as the task_identity fixture, for the module
        return {s: (_federation(app_defaults(), s, None)[0], _federation(app_defaults(), s, "absent")[0])
                for s in STRATEGIES}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("attack", ATTACKS)
def test_one_malicious_client_neither_crashes_nor_poisons_nor_hides(task_identity, defaults, clean, strategy, attack):
    accuracy, stats, rows = _federation(defaults, strategy, attack)
    assert len(stats) == ROUNDS  # the run finished
    unharmed = min(clean[strategy])
    assert accuracy >= unharmed - MARGIN, f"{attack} vs {strategy}: {accuracy:.3f}, clean and absent {clean[strategy]}"
    attacker = [r for r in rows if r["node_id"] == MALICIOUS]
    # the attacker is named every round: rejected, capped or trimmed, never silently "ok"
    assert len(attacker) == ROUNDS and all(r["status"] != "ok" for r in attacker), [r["status"] for r in attacker]
    assert all(r["status"].startswith(NAMED_AS.get(attack, "")) for r in attacker), [r["status"] for r in attacker]
    assert all(s[ROUND_CLIENTS_REJECTED] + s[ROUND_CLIENTS_CAPPED] + s[ROUND_CLIENTS_TRIMMED] >= 1 for s in stats)


def test_the_clean_runs_learn(clean):
    assert all(acc > 0.75 for acc, _ in clean.values()), clean  # a margin around chance would prove nothing
