"""`mlscale evaluate RUN --probe knn|linear`: the frozen features of a run, probed.

Any run whose model has `features` (a self-supervised backbone, or a classifier's trunk)
is embedded on the train split (the probe's training set: the k-NN bank, or the linear
layer's examples) and the val split (or --split), with the preprocessing the run
recorded. Prints `knn_top1` or `linear_top1` (and the probe's settings).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from mlscale.errors import InputError
from mlscale.tasks.selfsup import probe

PROBES = ("knn", "linear")


def evaluate_features(run_dir: Path, data: Path | None, kind: str, split: str = "val", step: int | None = None,
                      device: Any = "cpu", k: int = probe.KNN_K, temperature: float = probe.KNN_TEMPERATURE,
                      epochs: int = 30) -> dict[str, Any]:
    """Probe the features of the run in `run_dir` on the image directory `data` (default:
    the one it trained on)."""
    from mlscale.images.data import ImageData
    from mlscale.runtime import Runtime
    from mlscale.runtime.device import resolve_device
    from mlscale.train.checkpoint import run_data_dir
    from mlscale.train.task import task_owning_run

    if kind not in PROBES:
        raise InputError(f"--probe {kind}: choose one of {', '.join(PROBES)}")
    owner = task_owning_run(Path(run_dir))
    if owner is None:
        raise InputError(f"{run_dir} is not a run of an image model (no selfsup.json or preprocess.json); "
                         "--probe evaluates the features of image runs")
    dev = resolve_device(device) if isinstance(device, str) else device
    loaded = owner.load_run(run_dir, step, dev)
    data = Path(data) if data is not None else run_data_dir(run_dir)
    if data is None:
        raise InputError(f"{run_dir} does not record its image directory; pass --data")
    images = ImageData(data)
    bank, held_out = images.split("train"), images.split(split)
    for name, part in (("train", bank), (split, held_out)):
        if len(part) == 0 or int(part.labels.min()) < 0:
            raise InputError(f"{data}: the {name} split needs labelled images for a probe")
    t0 = time.perf_counter()
    pre, runtime = loaded.preprocess, Runtime(device=dev, dtype=torch.float32)
    train_x = probe.features(loaded.model, bank.images, pre["mean"], pre["std"], runtime)
    test_x = probe.features(loaded.model, held_out.images, pre["mean"], pre["std"], runtime)
    train_y, test_y = torch.as_tensor(bank.labels), torch.as_tensor(held_out.labels)
    out: dict[str, Any] = {"run": str(run_dir), "step": loaded.step, "data": str(data), "split": split,
                           "probe": kind, "train_images": len(bank), "images": len(held_out),
                           "feature_dim": int(train_x.shape[1])}
    if kind == "knn":
        out.update(k=k, temperature=temperature, knn_top1=probe.knn_top1(
            train_x, train_y, test_x, test_y, images.num_classes, k, temperature))
    else:
        out.update(epochs=epochs, **probe.linear_probe(train_x, train_y, test_x, test_y, images.num_classes,
                                                       epochs=epochs))
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out
