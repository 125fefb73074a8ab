"""Devices calibrated like Google's: ``google:<device>`` profiles from the calibration snapshots
cirq-google ships (Rainbow, Weber, Willow), extracted by ``scripts/extract_google_calibrations.py``
and converted as cirq-google's ``noise_properties_from_calibration`` does; checked against the
snapshot by hand (cirq's formulas written out here), and the extraction against cirq's JSON format.
No extra is needed: the numbers travel with the project."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import networkx as nx
import pytest

from qfl.common.config import ConfigError
from qfl.task.google_calibrations import QUBIT_FIELDS, SNAPSHOTS
from qfl.task.profiles import check_profile, get_profile

ROOT = Path(__file__).resolve().parents[2]
PXZ_NS, CZ_NS, SQRT_ISWAP_NS, SYC_NS = 25.0, 32.0, 32.0, 12.0  # cirq-google's DEFAULT_GATE_NS


def _decoherence_pauli_error(t1_ns: float, tphi_ns: float, gate_ns: float) -> float:
    """cirq.qis.decoherence_pauli_error, written out."""
    exp1 = math.exp(-gate_ns / t1_ns)
    exp2 = math.exp(-gate_ns * (1 / (2 * t1_ns) + 1 / tphi_ns))
    px = 0.25 * (1 - exp1)
    return 2 * px + (0.5 * (1 - exp2) - px)


def _qubit(device: str, name: str) -> dict[str, float]:
    values = dict(zip(QUBIT_FIELDS, SNAPSHOTS[device]["qubits"][name], strict=True))
    t1_ns = values["t1_us"] * 1e3
    dephasing = values["rb_incoherent_error"] - PXZ_NS / (3 * t1_ns)  # cirq: tphi_err
    values["tphi_ns"] = 1e10 if dephasing <= 0 else PXZ_NS / (3 * dephasing)
    values["t1_ns"] = t1_ns
    return values


def test_a_willow_profile_is_the_snapshot_worked_by_hand():
    a, b = _qubit("willow", "5_3"), _qubit("willow", "5_4")
    cz = SNAPSHOTS["willow"]["couplings"]["cz"]["5_3-5_4"]

    profile = get_profile("google:willow@5_3,5_4", 2)

    t2 = [1e-3 / (1 / (2 * q["t1_ns"]) + 1 / q["tphi_ns"]) for q in (a, b)]
    p1 = [q["rb_pauli_error"] - _decoherence_pauli_error(q["t1_ns"], q["tphi_ns"], PXZ_NS) for q in (a, b)]
    p2 = cz - sum(_decoherence_pauli_error(q["t1_ns"], q["tphi_ns"], CZ_NS) for q in (a, b))
    assert profile.name == "google:willow@5_3,5_4" and profile.coupling == ((0, 1),)
    assert profile.t1_us == pytest.approx(2 / (1 / a["t1_us"] + 1 / b["t1_us"]), rel=1e-12)  # rates averaged
    assert profile.t2_us == pytest.approx(2 / (1 / t2[0] + 1 / t2[1]), rel=1e-9)
    assert profile.p1 == pytest.approx(max(0.0, p1[0]) / 2 + max(0.0, p1[1]) / 2, rel=1e-9)
    assert profile.p2 == pytest.approx(max(0.0, p2), rel=1e-9) and profile.p2 > 0
    assert profile.gate_ns_1q == PXZ_NS and profile.gate_ns_2q == CZ_NS
    assert profile.readout_error == pytest.approx((a["p1_given0"] + a["p0_given1"] + b["p1_given0"] + b["p0_given1"]) / 4)
    assert profile.readout_asymmetry == pytest.approx((a["p0_given1"] - a["p1_given0"] + b["p0_given1"] - b["p1_given0"]) / 2)


def test_on_rainbow_a_cnot_is_two_of_the_better_native_gates():
    pair = next(iter(SNAPSHOTS["rainbow"]["couplings"]["sycamore"]))
    names = pair.split("-")
    qubits = [_qubit("rainbow", n) for n in names]
    errors = {gate: SNAPSHOTS["rainbow"]["couplings"][gate][pair] for gate in ("sycamore", "sqrt_iswap")}
    gate = min(errors, key=errors.get)
    ns = 2 * {"sycamore": SYC_NS, "sqrt_iswap": SQRT_ISWAP_NS}[gate]

    profile = get_profile(f"google:rainbow@{','.join(names)}", 2)

    two_gates = 1 - (1 - errors[gate]) ** 2
    expected = two_gates - sum(_decoherence_pauli_error(q["t1_ns"], q["tphi_ns"], ns) for q in qubits)
    assert profile.gate_ns_2q == ns and profile.p2 == pytest.approx(max(0.0, expected), rel=1e-9)


@pytest.mark.parametrize("device", sorted(SNAPSHOTS))
@pytest.mark.parametrize("n", [2, 4, 8])
def test_the_chosen_qubits_are_connected_and_the_same_every_time(device, n):
    first, again = get_profile(f"google:{device}", n), get_profile(f"google:{device}", n)

    names = first.name.split("@")[1].split(",")
    graph = nx.Graph(list(first.coupling))
    assert first == again and len(set(names)) == n == first.n_qubits
    assert set(graph.nodes) == set(range(n)) and nx.is_connected(graph)
    for a, b in first.coupling:  # each coupling of the profile is one of the device's, between grid neighbours
        (ra, ca), (rb, cb) = (tuple(map(int, names[q].split("_"))) for q in (a, b))
        assert abs(ra - rb) + abs(ca - cb) == 1
    assert 0 < first.p1 < 0.01 and 0 < first.p2 < 0.1 and 0 < first.readout_error < 0.2
    assert get_profile(first.name, n) == first  # the name names the same profile again


def test_willow_is_the_cleanest_of_the_three_as_published():
    p2 = {d: get_profile(f"google:{d}", 4).p2 for d in SNAPSHOTS}
    assert p2["willow"] < p2["rainbow"] and p2["willow"] < p2["weber"]


def test_overrides_and_the_run_config_check_accept_a_google_spec():
    profile = get_profile("google:weber:shots=512", 3)

    assert profile.shots == 512 and profile.name.startswith("google:weber@") and profile.name.endswith(":shots=512")
    check_profile("device-profiles", "google:weber", 3)  # no error
    with pytest.raises(ConfigError, match="device-profiles.*'google:weber@5_2,5_3' has 2 qubits, the run needs 3"):
        check_profile("device-profiles", "google:weber@5_2,5_3", 3)


def test_a_model_runs_on_a_google_device_routed_to_its_grid():
    import torch

    from qfl.common.contract import SWAPS
    from qfl.task.model import PQCClassifier

    model = PQCClassifier(4, 1, 3, seed=0, profile=get_profile("google:willow:shots=256", 4))
    x = torch.rand(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    out = model(x)

    assert out.shape == (5, 3) and torch.isfinite(out).all()
    assert model.routed_metrics(x)[SWAPS] > 0  # a ring of 4 on a grid's best line needs SWAPs


@pytest.mark.parametrize("spec, n, message", [
    ("google:sycamore", 3, r"unknown device profile 'google:sycamore': no Google calibration named 'sycamore' "
                           r"\(choose from rainbow, weber, willow\)"),
    ("google:willow@5_3,99_9", 2, r"device profile 'google:willow@5_3,99_9': no qubit '99_9' on willow"),
    ("google:willow@5_3,6_4", 2, r"device profile 'google:willow@5_3,6_4': qubits 5_3, 6_4 are not connected"),
    ("google:willow@5_3,5_3", 2, r"device profile 'google:willow@5_3,5_3': a qubit is named twice"),
    ("google:willow", None, r"device profile 'google:willow': name its qubits \('google:willow@0_6,0_7,0_8'\)"),
])
def test_a_bad_google_spec_fails_naming_it(spec, n, message):
    with pytest.raises(ValueError, match=message):
        get_profile(spec, n)


def test_the_extraction_reads_cirqs_calibration_json():
    """The script's reading of cirq's format: names, targets and values, read-out flips the right way."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        extract = importlib.import_module("extract_google_calibrations").extract
    finally:
        sys.path.remove(str(ROOT / "scripts"))

    def metric(name: str, targets: list[str], value: float) -> dict:
        return {"name": name, "targets": targets, "values": [{"doubleVal": value}]}

    per_qubit = {"single_qubit_idle_t1_micros": 20.0, "single_qubit_rb_pauli_error_per_gate": 1e-3,
                 "single_qubit_rb_incoherent_error_per_gate": 5e-4, "single_qubit_p00_error": 0.01,
                 "single_qubit_p11_error": 0.05}
    metrics = [metric(k, [q], v + (q == "1_2") * 1e-4) for q in ("1_2", "1_3") for k, v in per_qubit.items()]
    metrics += [metric("two_qubit_parallel_cz_gate_xeb_pauli_error_per_cycle", ["1_3", "1_2"], 4e-3),
                metric("two_qubit_parallel_cz_gate_xeb_entangler_theta_error_per_cycle", ["1_2", "1_3"], 0.1)]
    raw = json.dumps({"cirq_type": "Calibration", "metrics": {"metrics": metrics}}).encode()

    out = extract(raw)

    assert QUBIT_FIELDS == ("t1_us", "rb_pauli_error", "rb_incoherent_error", "p1_given0", "p0_given1")
    assert out["qubits"]["1_3"] == (20.0, 1e-3, 5e-4, 0.01, 0.05)  # p00 error: prepared 0, read 1
    assert out["qubits"]["1_2"] == pytest.approx((20.0001, 1.1e-3, 6e-4, 0.0101, 0.0501))
    assert out["couplings"] == {"cz": {"1_2-1_3": 4e-3}}  # pairs in grid order; angle errors not kept


def test_the_data_names_its_source_files():
    assert {d: s["file"] for d, s in SNAPSHOTS.items()} == {
        "rainbow": "rainbow_2021_11_16_calibration.json",
        "weber": "weber_2021_11_03_calibration.json",
        "willow": "willow_pink_d7v1-2024_08_16_calibration.json"}
    assert all(len(s["sha256"]) == 64 for s in SNAPSHOTS.values())
    assert {d: len(s["qubits"]) for d, s in SNAPSHOTS.items()} == {"rainbow": 23, "weber": 53, "willow": 105}
