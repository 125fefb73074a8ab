"""One membership audit: train the models of a setting, attack them, summarise, check the DP claim.

Two attackers (``docs/privacy.md`` states what each sees and which epsilon bounds it):

- ``outsider``: holds the final global model; epsilon: the accountant's (local DP: each
  client's, composed over its releases; central DP: the released models'); none without DP;
- ``server``: holds what every client sent it, round by round (under local DP the noised
  models; otherwise the clients' models as trained); bounded by local DP's epsilon only.
  Under secure aggregation (distributed DP) it sees each round's aggregate only, the noised
  sum of the sampled clients' clipped updates over their number, never one client's update:
  its observations are the rounds' aggregate models, and the ledger's epsilon, which counts
  exactly those sums, bounds it.

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


def server_logits(pool: Pool, run_config: dict, client_states: list[list[dict]], aggregate_only: bool = False) -> np.ndarray:
    """``(R, N, C)``: each example's logits under the model its own client sent in each round
    (``aggregate_only``: under the round's one aggregate, what secure aggregation shows)."""
    rounds = []
    for states in client_states:
        per_client = model_logits(pool, run_config, states)  # (clients, N, C), or (1, N, C): the aggregate
        rounds.append(per_client[0] if aggregate_only else per_client[pool.client, np.arange(len(pool.y))])
    return np.stack(rounds)


def distributed_noise(run_config: dict, participants: int) -> dict | None:
    r"""Under distributed DP (``secagg+dp``, ``dp-mode = "central"``), the noise the round's sum
    carries, from the project's own split (:func:`transport.secagg_flower.min_survivors`): each
    of ``participants`` nodes adds :math:`N(0, \sigma^2 C^2 / m_{\min})`, so the sum of all of
    them carries std :math:`\sigma C \sqrt{n / m_{\min}}`; the ledger counts
    :math:`\sigma C` (what the sum carries when only :math:`m_{\min}` survive). ``None``
    under any other setting."""
    from qfl.common.config import RunConfig
    from transport.secagg_flower import distributed_dp, min_survivors

    cfg = RunConfig.from_run_config(run_config)
    if not (cfg.uses_transport("secagg") and distributed_dp(cfg)):
        return None
    split = min_survivors(participants, cfg)
    unit = cfg.dp_noise_multiplier * cfg.dp_clip
    return {"participants": participants, "noise_split": split, "share_std": unit / split ** 0.5,
            "sum_std": unit * (participants / split) ** 0.5, "accounted_sum_std": unit,
            "server_sees": "each round's noised sum of every sampled client's clipped update, over their number"}


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
    config = None
    for m in range(models):
        config = audit_run_config(base, pool, seed * 1000 + m, overrides)
        result = train_model(pool, keep[m], config, rounds)
        trained.append(result.trained)
        logits = model_logits(pool, config, [result.global_state])  # (1, N, C)
        outsider.append(logits)
        server.append(server_logits(pool, config, result.client_states, result.aggregate_only))
        eps.append(result.epsilon)
        server_eps.append(result.server_epsilon)
        rejected += result.rejected
        accuracy.append(float((logits[0].argmax(axis=1) == pool.y)[~result.trained].mean()))
    members = np.array(trained)
    out = {"setting": overrides, "models": models, "rounds": rounds, "examples": len(pool.y),
           "epsilon": max(eps), "server_epsilon": max(server_eps), "accuracy_out": float(np.mean(accuracy)),
           "accuracy_out_std": float(np.std(accuracy)), "replies_rejected": rejected, "attackers": {}}
    noise = distributed_noise(config, pool.clients) if config is not None else None
    if noise is not None:  # only there: the other settings' records stay as they were
        out["distributed_dp"] = noise
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
