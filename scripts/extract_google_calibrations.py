"""Write ``qfl/task/google_calibrations.py`` from the calibrations that cirq-google ships.

cirq-google (Apache-2.0) ships three calibration snapshots of Google devices as JSON in
``cirq_google/devices/calibrations/``: Rainbow (2021-11-16), Weber (2021-11-03) and Willow
(pink d7v1, 2024-08-16). cirq-google itself cannot be installed beside this project (1.7
needs cirq-core 1.7, which mitiq 1.1 forbids; 1.6 pins protobuf < 6, which Flower 1.42's
dependencies forbid), so this script reads the wheel as a zip file, without importing or
installing it, and writes the metrics the conversion uses (:mod:`qfl.task.calibrated`) to a
Python module, with each source file's SHA-256, so that the data travels with the app (a
Flower app bundle carries ``.py`` files) and can be checked against the wheel again.

Run (the wheel from any mirror of PyPI; nothing else needed)::

    pip download cirq-google==1.7.0 --no-deps -d /tmp/cg
    python scripts/extract_google_calibrations.py /tmp/cg/cirq_google-1.7.0-py3-none-any.whl
"""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "qfl" / "task" / "google_calibrations.py"
FOLDER = "cirq_google/devices/calibrations/"
FILES = {  # the name in a spec -> the snapshot's file
    "rainbow": "rainbow_2021_11_16_calibration.json",
    "weber": "weber_2021_11_03_calibration.json",
    "willow": "willow_pink_d7v1-2024_08_16_calibration.json",
}
QUBIT_METRICS = {  # what cirq's noise_properties_from_calibration reads, per qubit
    "single_qubit_idle_t1_micros": "t1_us",
    "single_qubit_rb_pauli_error_per_gate": "rb_pauli_error",
    "single_qubit_rb_incoherent_error_per_gate": "rb_incoherent_error",
    "single_qubit_p00_error": "p1_given0",  # prepared 0, read 1
    "single_qubit_p11_error": "p0_given1",
}
GATE_METRICS = {  # and per coupling: the XEB Pauli error per cycle of each native gate
    "two_qubit_parallel_sqrt_iswap_gate_xeb_pauli_error_per_cycle": "sqrt_iswap",
    "two_qubit_parallel_sycamore_gate_xeb_pauli_error_per_cycle": "sycamore",
    "two_qubit_parallel_cz_gate_xeb_pauli_error_per_cycle": "cz",
}


QUBIT_FIELDS = tuple(QUBIT_METRICS.values())


def extract(raw: bytes) -> dict:
    """One snapshot's metrics: ``{"qubits": {name: (one value per QUBIT_FIELDS)}, "couplings": {gate: {"a-b": value}}}``."""
    metrics = json.loads(raw)["metrics"]["metrics"]
    qubits: dict[str, dict[str, float]] = {}
    couplings: dict[str, dict[str, float]] = {}
    for metric in metrics:
        value = float(metric["values"][0]["doubleVal"])
        if metric["name"] in QUBIT_METRICS:
            (target,) = metric["targets"]
            qubits.setdefault(target, {})[QUBIT_METRICS[metric["name"]]] = value
        elif metric["name"] in GATE_METRICS:
            a, b = sorted(metric["targets"], key=_grid)
            couplings.setdefault(GATE_METRICS[metric["name"]], {})[f"{a}-{b}"] = value
    missing = {q: [f for f in QUBIT_FIELDS if f not in v] for q, v in qubits.items()}
    if any(missing.values()):
        raise SystemExit(f"qubits without a metric the conversion needs: {missing}")
    return {"qubits": {q: tuple(qubits[q][f] for f in QUBIT_FIELDS) for q in sorted(qubits, key=_grid)},
            "couplings": {g: dict(sorted(c.items())) for g, c in couplings.items()}}


def _grid(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in name.split("_"))


def _module(wheel: str, snapshots: dict) -> str:
    lines = [
        '"""Google device calibrations, extracted from cirq-google\'s snapshots (generated: do not edit).',
        "",
        f"Source: ``{wheel}``, ``{FOLDER}`` (Apache-2.0,",
        "Copyright The Cirq Developers); made by ``scripts/extract_google_calibrations.py``, which says",
        "why cirq-google is read and not imported. Per snapshot: the file and its SHA-256; per qubit",
        "(``row_col``) the values of :data:`QUBIT_FIELDS` (T1 in microseconds, randomized benchmarking's",
        "Pauli and incoherent error per gate, the read-out flips p(1|0) and p(0|1)); per coupling the XEB",
        "Pauli error per cycle of each native 2-qubit gate (``sqrt_iswap``, ``sycamore``, ``cz``).",
        ":mod:`qfl.task.calibrated` turns them into device profiles.",
        '"""',
        "",
        f"SOURCE_WHEEL = {wheel!r}",
        f"QUBIT_FIELDS = {QUBIT_FIELDS!r}",
        "",
        "SNAPSHOTS = {",
    ]
    for name, snap in snapshots.items():
        lines += [f"    {name!r}: {{", f"        'file': {snap['file']!r},", f"        'sha256': {snap['sha256']!r},",
                  "        'qubits': {"]
        lines += [f"            {q!r}: {v!r}," for q, v in snap["qubits"].items()]
        lines += ["        },", "        'couplings': {"]
        for gate, values in snap["couplings"].items():
            lines += [f"            {gate!r}: {{"] + [f"                {e!r}: {v!r}," for e, v in values.items()]
            lines += ["            },"]
        lines += ["        },", "    },"]
    return "\n".join(lines + ["}", ""])


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit(__doc__)
    wheel = Path(argv[0])
    snapshots, hashes = {}, {}
    with zipfile.ZipFile(wheel) as archive:
        for name, file in FILES.items():
            raw = archive.read(FOLDER + file)
            hashes[name] = hashlib.sha256(raw).hexdigest()
            snapshots[name] = {"file": file, "sha256": hashes[name], **extract(raw)}
    text = _module(wheel.name, snapshots)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}: " + ", ".join(f"{k} ({len(v['qubits'])} qubits)" for k, v in snapshots.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
