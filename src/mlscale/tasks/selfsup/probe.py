"""How good are frozen features? The two probes of the self-supervised literature.

    features(model, split, mean, std)            [N, D] embeddings of every image
    knn_predict(bank, bank_labels, queries)      DINO's weighted k-NN (k = 20, T = 0.07)
    linear_probe(train, labels, val, labels)     BatchNorm without affine + one linear layer

The k-NN rule is DINO's (`eval_knn.py`): cosine similarity to every image of the bank,
the k most similar vote with weight exp(similarity / T), the class with the largest sum
wins. The linear probe is MAE's: a BatchNorm without affine parameters in front of a
linear classifier (it stands in for the feature normalisation that a ViT's features
need), trained on the cached features with AdamW and a cosine schedule; no augmentation,
so the features are computed once.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlscale.runtime import Runtime
from mlscale.runtime.device import autocast
from mlscale.tasks import augment

KNN_K = 20
KNN_TEMPERATURE = 0.07


@torch.no_grad()
def features(model: nn.Module, images: Any, mean: list[float], std: list[float], runtime: Runtime,
             batch_size: int = 512) -> Tensor:
    """`model.features` of uint8 images [N, H, W, C] (a split's images or a slice), fp32 on
    the CPU, in eval mode (BatchNorm with its running statistics)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = augment.to_float(images[start:start + batch_size], mean, std, runtime.device)
        with autocast(runtime.device, runtime.dtype):
            out.append(model.features(x).float().cpu())
    model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def knn_predict(bank: Tensor, bank_labels: Tensor, queries: Tensor, num_classes: int, k: int = KNN_K,
                temperature: float = KNN_TEMPERATURE, chunk: int = 1024) -> Tensor:
    """Predicted class of each query [Q, D] by weighted k-NN over the bank [N, D]."""
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, len(bank))
    preds = []
    for start in range(0, len(queries), chunk):
        q = F.normalize(queries[start:start + chunk].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(q), num_classes)
        votes.scatter_add_(1, bank_labels[idx], (sim / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_top1(bank: Tensor, bank_labels: Tensor, queries: Tensor, labels: Tensor, num_classes: int,
             k: int = KNN_K, temperature: float = KNN_TEMPERATURE) -> float:
    """Share of queries the weighted k-NN classifies right."""
    return float((knn_predict(bank, bank_labels, queries, num_classes, k, temperature) == labels).float().mean())


def linear_probe(train: Tensor, train_labels: Tensor, val: Tensor, val_labels: Tensor, num_classes: int,
                 epochs: int = 30, batch_size: int = 1024, lr: float = 3e-3, weight_decay: float = 1e-4,
                 seed: int = 0) -> dict[str, float]:
    """Train BatchNorm(affine=False) + Linear on frozen features; top-1 on val and train."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    probe = nn.Sequential(nn.BatchNorm1d(train.shape[1], affine=False), nn.Linear(train.shape[1], num_classes))
    nn.init.trunc_normal_(probe[1].weight, std=0.01)  # MAE's init of the probe's head
    nn.init.zeros_(probe[1].bias)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * int(np.ceil(len(train) / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        order = torch.randperm(len(train), generator=gen)
        for start in range(0, len(train), batch_size):
            rows = order[start:start + batch_size]
            if len(rows) < 2:  # BatchNorm needs two rows
                continue
            loss = F.cross_entropy(probe(train[rows]), train_labels[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    probe.eval()
    with torch.no_grad():
        val_top1 = float((probe(val).argmax(1) == val_labels).float().mean())
        train_top1 = float((probe(train).argmax(1) == train_labels).float().mean())
    return {"linear_top1": val_top1, "linear_train_top1": train_top1}


def pixel_knn_top1(bank_images: Any, bank_labels: Any, query_images: Any, query_labels: Any,
                   num_classes: int, k: int = KNN_K, temperature: float = KNN_TEMPERATURE) -> float:
    """The same k-NN rule on raw pixels (uint8 [N, H, W, C] flattened): the floor a
    feature extractor has to beat."""
    def flat(x: Any) -> Tensor:
        return torch.from_numpy(np.asarray(x, dtype=np.float32).reshape(len(x), -1) / 255)

    return knn_top1(flat(bank_images), torch.as_tensor(np.asarray(bank_labels)), flat(query_images),
                    torch.as_tensor(np.asarray(query_labels)), num_classes, k, temperature)
