"""A model of the user's own: ``model = "package.module:factory"``.

``factory(run_config)`` gets the run config as Flower's ``context.run_config`` holds it (a flat
mapping, dashed keys) and returns a ``torch.nn.Module`` that maps a batch of ``n-qubits``
angles ``(B, n_qubits)`` to class logits ``(B, n_classes)`` (with ``task-kind = "regression"``:
one prediction per row, ``(B, 1)`` or ``(B,)``); typically it holds one or more PennyLane QNodes
as ``qml.qnn.TorchLayer`` s. The module must be importable where the model is built: installed,
on ``PYTHONPATH``, or inside the Flower app directory (``qfl new`` writes one whose ``task.py``
is such a module). Its parameters are drawn under ``torch.manual_seed(seed)`` (the run's seed:
every node starts from the same global model) and travel as the module's ``state_dict``. The
same federation, guard, transports and DP apply. On a node's device profile, and with
zero-noise extrapolation, its QNodes run with the profile's noise (:mod:`qfl.task.user_noise`);
PEC and the trainable embedding act on the built-in circuit only and are refused, by key
(:class:`~qfl.common.config.RunConfig`, :func:`qfl.task.user_noise.check_user_device`).
"""

from __future__ import annotations

import importlib
import re

import torch

from qfl.common.config import KEY, MITIGATIONS
from qfl.task.profiles import DeviceProfile

FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class UserModelError(ValueError):
    """The user's factory cannot be loaded, or what it returns does not fit the run."""


def load_factory(name: str):  # noqa: ANN201
    """The callable ``name`` (``"package.module:factory"``) names."""
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserModelError(f"model {name!r}: cannot import {module_name!r} ({err}); put it on PYTHONPATH, install it, "
                             "or keep it in the app directory") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserModelError(f"model {name!r}: {module_name!r} has no callable {attr!r}")
    return factory


class UserModel(torch.nn.Module):
    """The user's module behind the interface the clients train through: inputs cast to the
    module's dtype, a regression model's ``(B,)`` output given its axis; on a device profile
    (``device``, a :class:`qfl.task.user_noise.UserDevice`) its QNodes run noisily, exactly (no
    noise draws to reseed: the device's update is deterministic)."""

    def __init__(self, module: torch.nn.Module, profile: DeviceProfile | None = None,
                 mitigation: str = MITIGATIONS[0]) -> None:
        super().__init__()
        self.module = module
        self.device = None
        if profile is not None:
            from qfl.task.user_noise import attach

            self.device = attach(module, profile, mitigation)  # None: nothing changes (noiseless, no mitigation)
        self.profile, self.mitigation = profile, mitigation
        self.zne = mitigation == MITIGATIONS[1]
        self.is_noisy = profile is not None and not profile.is_noiseless
        first = next(iter(module.parameters()), None)
        self._dtype = first.dtype if first is not None else torch.float64

    def reseed_noise(self, seed: int) -> None:
        """Nothing to reseed: the device's channels are simulated exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x.to(self._dtype)).to(torch.float64)
        return out[:, None] if out.dim() == 1 else out


def build_user_model(name: str, run_config: dict, n_inputs: int, n_classes: int, seed: int,
                     profile: DeviceProfile | None = None, mitigation: str = MITIGATIONS[0],
                     regression: bool = False) -> UserModel:
    """The module ``name``'s factory makes for ``run_config``, on the device ``profile`` with its
    ``mitigation`` (``None``: the user's own QNodes as they are), checked on a batch of two inputs.

    Raises
    ------
    UserModelError
        The factory cannot be loaded or fails, returns no ``torch.nn.Module`` or one without
        parameters, or its output for ``(2, n_inputs)`` angles is not ``(2, n_classes)`` logits
        (regression: ``(2, 1)`` or ``(2,)``).
    qfl.task.user_noise.UserDeviceError
        The profile or mitigation cannot apply to the module's circuit (its ``key`` names the key).
    """
    factory = load_factory(name)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        try:
            module = factory(dict(run_config))
        except Exception as err:  # noqa: BLE001 (the user's code: any failure is reported with its cause)
            raise UserModelError(f"model {name!r}: the factory failed: {type(err).__name__}: {err}") from err
    if not isinstance(module, torch.nn.Module):
        raise UserModelError(f"model {name!r}: the factory returned {type(module).__name__}, not a torch.nn.Module")
    if not any(p.requires_grad for p in module.parameters()):
        raise UserModelError(f"model {name!r}: the module has no trainable parameters")
    model = UserModel(module, profile, mitigation)
    probe = torch.full((2, n_inputs), 0.5, dtype=torch.float64)
    with torch.no_grad():
        if model.device is not None:
            _check_on_device(name, model, probe)
        try:
            out = model(probe)
        except Exception as err:  # noqa: BLE001
            raise UserModelError(f"model {name!r}: a batch of 2 x {n_inputs} angles fails: {type(err).__name__}: {err}") from err
    if tuple(out.shape) != (2, n_classes):
        wanted = "one prediction per row (regression)" if regression else "class logits"
        raise UserModelError(f"model {name!r}: maps 2 x {n_inputs} angles to shape {tuple(out.shape)}; the run needs "
                             f"(2, {n_classes}) {wanted}")
    return model


def _check_on_device(name: str, model: UserModel, probe: torch.Tensor) -> None:
    """The ideal pass's measurements must be what the device's read-out covers, and the device's
    circuit must build and run (decompose, route, fold): else refused, naming the key."""
    from qfl.task.user_noise import UserDeviceError, check_measurements

    device = model.device
    try:
        with device.ideal(), device.recording() as calls:
            model(probe)
    except Exception as err:  # noqa: BLE001
        raise UserModelError(f"model {name!r}: a batch of 2 x {probe.shape[1]} angles fails: {type(err).__name__}: {err}") from err
    check_measurements(device, calls)
    try:
        model(probe)
    except Exception as err:  # noqa: BLE001 (PennyLane's own words: what it could not decompose, route or fold)
        key = KEY.mitigation if model.zne else KEY.device_profiles
        raise UserDeviceError(key, f"model {name!r} on device profile {device.profile.name!r}"
                                   f"{' with zne' if model.zne else ''}: its circuit does not run there: "
                                   f"{type(err).__name__}: {err}") from err
