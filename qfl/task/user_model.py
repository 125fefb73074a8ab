"""A model of the user's own: ``model = "package.module:factory"``.

``factory(run_config)`` gets the run config as Flower's ``context.run_config`` holds it (a flat
mapping, dashed keys) and returns a ``torch.nn.Module`` that maps a batch of ``n-qubits``
angles ``(B, n_qubits)`` to class logits ``(B, n_classes)``; typically it holds one or more
PennyLane QNodes as ``qml.qnn.TorchLayer`` s. The module must be importable where the model is
built: installed, on ``PYTHONPATH``, or inside the Flower app directory (``qfl new`` writes
one whose ``task.py`` is such a module). Its parameters are drawn under ``torch.manual_seed(seed)``
(the run's seed: every node starts from the same global model) and travel as the module's
``state_dict``. The same federation, guard, transports and DP apply; the device profiles, their
noise, mitigation and the noise claims act on the built-in circuit and are refused, by key,
for a user's model (:class:`~qfl.common.config.RunConfig`).
"""

from __future__ import annotations

import importlib
import re

import torch

from qfl.common.config import MITIGATIONS

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
    """The user's module behind the interface the clients train through: no simulated device
    (no profile, no mitigation, no noise to reseed), inputs cast to the module's dtype."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module
        self.profile, self.zne, self.mitigation, self.is_noisy = None, False, MITIGATIONS[0], False
        first = next(iter(module.parameters()), None)
        self._dtype = first.dtype if first is not None else torch.float64

    def reseed_noise(self, seed: int) -> None:
        """Nothing to reseed: the user's device is ideal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(self._dtype)).to(torch.float64)


def build_user_model(name: str, run_config: dict, n_inputs: int, n_classes: int, seed: int) -> UserModel:
    """The module ``name``'s factory makes for ``run_config``, checked on a batch of two inputs.

    Raises
    ------
    UserModelError
        The factory cannot be loaded or fails, returns no ``torch.nn.Module`` or one without
        parameters, or its output for ``(2, n_inputs)`` angles is not ``(2, n_classes)`` logits.
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
    model = UserModel(module)
    with torch.no_grad():
        try:
            out = model(torch.full((2, n_inputs), 0.5, dtype=torch.float64))
        except Exception as err:  # noqa: BLE001
            raise UserModelError(f"model {name!r}: a batch of 2 x {n_inputs} angles fails: {type(err).__name__}: {err}") from err
    if tuple(out.shape) != (2, n_classes):
        raise UserModelError(f"model {name!r}: maps 2 x {n_inputs} angles to shape {tuple(out.shape)}; the run needs "
                             f"(2, {n_classes}) class logits")
    return model
