"""lightly's own loss modules, imported without torchvision.

lightly's packages import torchvision at import time (`lightly.loss` for ROI ops,
`lightly.models.utils` for StochasticDepth), and torchvision cannot load beside the CPU
torch wheel this project pins. The loss modules themselves use neither: we register
lightly's packages without running their `__init__` files and give `torchvision.ops` a
stand-in whose StochasticDepth refuses to be used, then import lightly's real
`ntx_ent_loss` and `dino_loss` modules. (bench_ssl runs the whole of lightly in the
venv that has torchvision.)
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path


def _package(name: str, path: Path) -> None:
    if name not in sys.modules:
        module = types.ModuleType(name)
        module.__path__ = [str(path)]  # a package whose __init__ is not run
        sys.modules[name] = module


def lightly_losses() -> types.SimpleNamespace:
    """lightly's NTXentLoss and DINOLoss classes; lightly is a test dependency, so a
    missing one is an error."""
    spec = importlib.util.find_spec("lightly")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("lightly is not installed: `make venv` installs it (pip install --no-deps lightly)")
    root = Path(list(spec.submodule_search_locations)[0])
    stand_in = False
    try:
        import torchvision  # noqa: F401
    except Exception:
        stand_in = True
        ops = types.ModuleType("torchvision.ops")

        class StochasticDepth:  # noqa: D401 - a stand-in
            def __init__(self, *args, **kwargs):
                raise RuntimeError("torchvision is not available in this venv")

        ops.StochasticDepth = StochasticDepth
        tv = types.ModuleType("torchvision")
        tv.ops = ops
        sys.modules.setdefault("torchvision", tv)
        sys.modules.setdefault("torchvision.ops", ops)
    _package("lightly", root)
    for sub in ("loss", "models", "models/modules", "utils"):
        _package("lightly." + sub.replace("/", "."), root / sub)
    ntx = importlib.import_module("lightly.loss.ntx_ent_loss")
    dino = importlib.import_module("lightly.loss.dino_loss")
    if stand_in:  # no other test may mistake the stand-in for torchvision
        for name in ("torchvision", "torchvision.ops"):
            sys.modules.pop(name, None)
    return types.SimpleNamespace(NTXentLoss=ntx.NTXentLoss, DINOLoss=dino.DINOLoss)
