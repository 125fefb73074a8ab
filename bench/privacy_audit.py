"""Study: membership inference against the federation, per privacy setting and device.

For each setting, ``--models`` federations (:mod:`qfl.audit.federation`: the real ClientApp
with its transport mod, the server's transports, guard and strategy chain, in process) train
on random halves of a data set's pool (training and test splits together; each example owned
by one of ``--clients`` clients for good, an independent fair coin per example and model).
Each model in turn is the target, the others its shadows (:mod:`qfl.audit.study`); the
attackers are an outsider with the final global model and the server with every client's
reply of every round (under distributed DP, secure aggregation with each node adding its share
of the noise, the server sees each round's noised sum only: its observations are the rounds'
aggregates). Attacks: LiRA online and offline, the loss threshold. Reported: AUC and
TPR at 0.1 % and 1 % FPR with 95 % bootstrap intervals over target models, the accountant's
epsilon, the largest epsilon the guesses prove (Clopper-Pearson, thresholds chosen on half the
targets) and whether it exceeds the claim, the quantum-DP epsilon of the setting's device
(:mod:`qfl.audit.quantum_dp`), and accuracy on the examples a model did not train on.

Each setting writes ``bench/results/privacy-audit/<setting>.json``; ``--report`` prints the
table of all of them. Run (each call under about 10 minutes on 2 busy cores)::

    python bench/privacy_audit.py --settings none local-0.5 local-2 local-8
    python bench/privacy_audit.py --settings central-0.5 central-2 central-8
    python bench/privacy_audit.py --settings distributed-0.5 distributed-2 distributed-8
    python bench/privacy_audit.py --settings noisy-nisq ibm-heron
    python bench/privacy_audit.py --report
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)  # this folder first on sys.path would shadow the project's packages
OUT = ROOT / "bench" / "results" / "privacy-audit"

TRAINING = {"local-epochs": 10, "learning-rate": 0.1}
SETTINGS = {
    "none": {},
    **{f"local-{s:g}": {"transport": "dp", "dp-mode": "local", "dp-noise-multiplier": s} for s in (0.5, 2.0, 8.0)},
    **{f"central-{s:g}": {"transport": "dp", "dp-mode": "central", "dp-noise-multiplier": s} for s in (0.5, 2.0, 8.0)},
    # distributed DP: secure aggregation, each node clipping its update and adding its share of the noise
    **{f"distributed-{s:g}": {"transport": "secagg+dp", "dp-mode": "central", "dp-noise-multiplier": s}
       for s in (0.5, 2.0, 8.0)},
    "noisy-nisq": {"device-profiles": "noisy-nisq"},
    "ibm-heron": {"device-profiles": "ibm-heron"},
}


def quantum_column(base: dict, overrides: dict, n_qubits: int, n_classes: int, rounds: int) -> dict:
    """The quantum-DP figures of the setting's device (exact expectations, as run, and with
    1,024 shots per expectation, as on hardware)."""
    from dataclasses import asdict, replace

    from qfl.audit.quantum_dp import quantum_dp
    from qfl.task.profiles import get_profile

    profile = get_profile(overrides.get("device-profiles", base["device-profiles"]), n_qubits)
    epochs = overrides.get("local-epochs", TRAINING["local-epochs"])
    layers = base["n-layers"]
    return {"as-run": asdict(quantum_dp(profile, n_qubits, layers, n_classes, rounds, epochs)),
            "1024-shots": asdict(quantum_dp(replace(profile, shots=1024), n_qubits, layers, n_classes, rounds, epochs))}


def run(args: argparse.Namespace) -> None:
    import torch

    from qfl.audit.federation import Pool
    from qfl.audit.study import audit_setting
    from qfl.inprocess import task_identity
    from qfl.launch.config import app_defaults

    torch.set_num_threads(1)
    base = {**app_defaults(ROOT), "n-qubits": args.qubits}
    pool = Pool.of_dataset(args.dataset, args.qubits, args.clients, args.seed)
    OUT.mkdir(parents=True, exist_ok=True)
    with task_identity():
        for name in args.settings:
            overrides = {**TRAINING, **SETTINGS[name]}
            started = time.monotonic()
            result = audit_setting(pool, base, overrides, args.models, args.rounds, args.seed)
            result.update(name=name, dataset=args.dataset, clients=args.clients, qubits=args.qubits,
                          quantum_dp=quantum_column(base, overrides, args.qubits, pool.n_classes, args.rounds),
                          command=" ".join(sys.argv))
            (OUT / f"{name}.json").write_text(json.dumps(result, indent=1))
            lira = result["attackers"]["outsider"]["lira-online"]["summary"]
            print(f"{name}: {args.models} models in {time.monotonic() - started:.0f} s; outsider LiRA AUC "
                  f"{lira['auc']:.3f}, epsilon {result['epsilon']:.3g}, accuracy {result['accuracy_out']:.3f}", flush=True)


def _ci(s: dict, key: str, digits: int = 3) -> str:
    lo, hi = s[f"{key}_ci"]
    return f"{s[key]:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _eps(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:.3g}"


def report() -> str:
    """The markdown tables of every setting's results."""
    rows = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]
    order = {name: i for i, name in enumerate(SETTINGS)}
    rows.sort(key=lambda r: order.get(r["name"], len(order)))
    lines = ["| setting | models | attacker | attack | AUC [95 % CI] | TPR @ 0.1 % FPR | TPR @ 1 % FPR | accountant ε | "
             "ε the guesses prove | violated | quantum ε (one shot) | accuracy |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        quantum = r["quantum_dp"]["as-run"]["epsilon_shot"]
        for who, attacks in r["attackers"].items():
            eps = r["epsilon"] if who == "outsider" else r["server_epsilon"]
            for name, a in attacks.items():
                s, c = a["summary"], a["dp_check"]
                lines.append(f"| {r['name']} | {r['models']} | {who} | {name} | {_ci(s, 'auc')} | {_ci(s, 'tpr_001')} | {_ci(s, 'tpr_01')} | "
                             f"{_eps(eps)} | {c['epsilon_lower']:.2f} | {'yes' if c['violated'] else 'no'} | "
                             f"{_eps(quantum)} | {r['accuracy_out']:.3f} |")
    if rows:
        r = rows[0]
        lines.append(f"\n{r['dataset']}, {r['qubits']} qubits, {r['clients']} clients, {r['rounds']} rounds, "
                     f"{r['examples']} examples; {sum(x['seconds'] for x in rows):.0f} s.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=["none"], choices=list(SETTINGS))
    p.add_argument("--dataset", default="wine")
    p.add_argument("--qubits", type=int, default=4)
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--models", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", action="store_true", help="print the table of the results so far, run nothing")
    args = p.parse_args()
    if args.report:
        print(report())
    else:
        run(args)


if __name__ == "__main__":
    main()
