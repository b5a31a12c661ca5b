"""The floor under an image classifier: k-nearest neighbours on raw pixels.

Reads the train and val splits of an `mlscale images` output and classifies every val
image by the labels of its k nearest train images (Euclidean distance on pixels scaled
to [0, 1], majority vote, ties to the nearest). Fashion-MNIST's own benchmark table puts
this at 85-86%; a trained model that does not beat it has learnt nothing pixels don't
already say. It also prints the floor of the self-supervised probes: the weighted k-NN
rule of `mlscale evaluate --probe knn` (DINO's: cosine similarity, k = 20, votes weighted
by exp(similarity / 0.07)) on the same raw pixels.

    python benchmarks/knn_pixels.py fm            # after `mlscale images ... --out fm`
    python benchmarks/knn_pixels.py fm --k 1 5 10

Prints JSON: top-1 for each k, images, seconds.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from mlscale.images.data import ImageData


def knn_top1(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
             ks: list[int], chunk: int = 1000) -> dict[int, float]:
    """Top-1 of k-NN for each k in `ks` (one distance computation serves every k)."""
    kmax, classes = max(ks), int(train_y.max()) + 1
    sq = (train_x * train_x).sum(1)
    correct = {k: 0 for k in ks}
    for start in range(0, len(val_x), chunk):
        q = val_x[start:start + chunk]
        dist = sq[None, :] - 2 * q @ train_x.T  # |q|^2 is the same for every candidate of a row
        nearest = train_y[dist.topk(kmax, dim=1, largest=False).indices]  # [q, kmax], nearest first
        for k in ks:
            votes = torch.nn.functional.one_hot(nearest[:, :k], classes).sum(1).float()
            votes[torch.arange(len(q)), nearest[:, 0]] += 0.5  # a tie goes to the nearest's class
            correct[k] += int((votes.argmax(1) == val_y[start:start + chunk]).sum())
    return {k: correct[k] / len(val_x) for k in ks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", help="an `mlscale images` output directory")
    ap.add_argument("--k", type=int, nargs="+", default=[1, 5])
    args = ap.parse_args()
    data = ImageData(args.data)
    t0 = time.perf_counter()
    x = {s: torch.from_numpy(np.asarray(data.split(s).images, dtype=np.float32).reshape(len(data.split(s)), -1) / 255)
         for s in ("train", "val")}
    y = {s: torch.from_numpy(data.split(s).labels) for s in ("train", "val")}
    top1 = knn_top1(x["train"], y["train"], x["val"], y["val"], args.k)
    from mlscale.tasks.selfsup.probe import knn_top1 as weighted_knn_top1

    weighted = weighted_knn_top1(x["train"], y["train"], x["val"], y["val"], data.num_classes)
    print(json.dumps({"knn_raw_pixels_top1": {f"k={k}": round(v, 4) for k, v in top1.items()},
                      "weighted_knn_raw_pixels_top1": round(weighted, 4),
                      "train_images": len(x["train"]), "val_images": len(x["val"]),
                      "seconds": round(time.perf_counter() - t0, 1)}, indent=2))


if __name__ == "__main__":
    main()
