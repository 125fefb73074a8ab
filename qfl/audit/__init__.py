"""Privacy audits of the federation: membership inference (LiRA and the loss threshold) against
the global model and the server's view, quantum-DP figures of the devices, model extraction.
See ``docs/privacy.md``."""

from qfl.audit.membership import (
    AttackSummary,
    BoundCheck,
    check_dp_bound,
    clopper_pearson,
    lira_scores,
    log_probability,
    logit_confidence,
    roc_auc,
    summarise,
    tpr_at_fpr,
)
from qfl.audit.quantum_dp import QuantumDP, depolarizing_epsilon, quantum_dp

__all__ = [
    "AttackSummary",
    "BoundCheck",
    "QuantumDP",
    "check_dp_bound",
    "clopper_pearson",
    "depolarizing_epsilon",
    "lira_scores",
    "log_probability",
    "logit_confidence",
    "quantum_dp",
    "roc_auc",
    "summarise",
    "tpr_at_fpr",
]
