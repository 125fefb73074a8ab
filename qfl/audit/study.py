"""One membership audit: train the models of a setting, attack them, summarise, check the DP claim.

Two attackers (``docs/privacy.md`` states what each sees and which epsilon bounds it):

- ``outsider``: holds the final global model; epsilon: the accountant's (local DP: each
  client's, composed over its releases; central DP: the released models'); none without DP;
- ``server``: holds what every client sent it, round by round (under local DP the noised
  models; otherwise the clients' models as trained); bounded by local DP's epsilon only.
  Under secure aggregation it would see the sum only; that is not audited here.

Each is attacked with LiRA online and offline (:func:`~qfl.audit.membership.lira_scores`) and
with the loss threshold (:func:`~qfl.audit.membership.log_probability`), leave-one-out over the
setting's models.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np

from qfl.audit.federation import Pool, audit_run_config, draw_membership, model_logits, train_model
from qfl.audit.membership import check_dp_bound, lira_scores, log_probability, logit_confidence, summarise
from qfl.common.config import KEY

ATTACKS = ("lira-online", "lira-offline", "loss")


def _attack_scores(logits: np.ndarray, labels: np.ndarray, keep: np.ndarray) -> dict[str, np.ndarray]:
    """Each attack's ``(M, N)`` scores from logits ``(M, K, N, C)`` (``K`` observations per target)."""
    phi = np.moveaxis(logit_confidence(logits, labels), 1, -1)  # (M, N, K)
    return {"lira-online": lira_scores(phi, keep, online=True), "lira-offline": lira_scores(phi, keep, online=False),
            "loss": np.moveaxis(log_probability(logits, labels), 1, -1).mean(axis=-1)}


def server_logits(pool: Pool, run_config: dict, client_states: list[list[dict]]) -> np.ndarray:
    """``(R, N, C)``: each example's logits under the model its own client sent in each round."""
    rounds = []
    for states in client_states:
        per_client = model_logits(pool, run_config, states)  # (clients, N, C)
        rounds.append(per_client[pool.client, np.arange(len(pool.y))])
    return np.stack(rounds)


def audit_setting(pool: Pool, base: dict, overrides: dict, models: int, rounds: int, seed: int,
                  resamples: int = 200) -> dict:
    """Train ``models`` federations of one setting (``overrides`` of the run config) on random
    halves of ``pool``, attack them as outsider and server, and summarise.

    Returns a JSON-able dict: the setting, the accountant's epsilons, utility (accuracy of the
    global model on the pool examples it did not train on), and per attacker and attack an
    :class:`~qfl.audit.membership.AttackSummary` and a
    :class:`~qfl.audit.membership.BoundCheck` against that attacker's epsilon. Call inside
    :func:`qfl.inprocess.task_identity`.
    """
    started = time.monotonic()
    rng = np.random.default_rng([seed, 0xA1])
    keep = draw_membership(models, len(pool.y), rng)
    trained, outsider, server, eps, server_eps, accuracy, rejected = [], [], [], [], [], [], 0
    for m in range(models):
        config = audit_run_config(base, pool, seed * 1000 + m, overrides)
        result = train_model(pool, keep[m], config, rounds)
        trained.append(result.trained)
        logits = model_logits(pool, config, [result.global_state])  # (1, N, C)
        outsider.append(logits)
        server.append(server_logits(pool, config, result.client_states))
        eps.append(result.epsilon)
        server_eps.append(result.server_epsilon)
        rejected += result.rejected
        accuracy.append(float((logits[0].argmax(axis=1) == pool.y)[~result.trained].mean()))
    members = np.array(trained)
    out = {"setting": overrides, "models": models, "rounds": rounds, "examples": len(pool.y),
           "epsilon": max(eps), "server_epsilon": max(server_eps), "accuracy_out": float(np.mean(accuracy)),
           "accuracy_out_std": float(np.std(accuracy)), "replies_rejected": rejected, "attackers": {}}
    for who, logits, epsilon in (("outsider", np.array(outsider), max(eps)), ("server", np.array(server), max(server_eps))):
        scores = _attack_scores(logits, pool.y, members)
        out["attackers"][who] = {
            name: {"summary": asdict(summarise(s, members, np.random.default_rng([seed, 0xB0]), resamples)),
                   "dp_check": asdict(check_dp_bound(s, members, epsilon, base_delta(base, overrides)))}
            for name, s in scores.items()}
    out["seconds"] = time.monotonic() - started
    return out


def base_delta(base: dict, overrides: dict) -> float:
    """The run's ``dp-delta``."""
    return float(overrides.get(KEY.dp_delta, base[KEY.dp_delta]))
