"""Self-supervised pretraining of image backbones: no labels in, features out.

    simclr.py     SimCLR: NT-Xent between two views, negatives from the global batch
    dino.py       DINO: self-distillation onto an EMA teacher, multi-crop, centering
    mae.py        MAE: reconstruct 75% masked patches from the visible 25%
    base.py       what the three share: data, the backbone inside the network, the k-NN
                  probe during training, collapse statistics, loading a finished run
    views.py      batched augmentations: crops, jitter, blur, solarisation, flips
    heads.py      SimCLR's projection head, DINO's head, backbone + head as one module
    mae_model.py  MAE's encoder pass and light decoder around a ViT
    losses.py     the objectives (NT-Xent, DINO, MAE's patch loss) and their schedules
    collapse.py   collapse signatures and the stop they trigger
    probe.py      k-NN and linear probes on frozen features
    evaluate.py   `mlscale evaluate RUN --probe knn|linear`

Each task registers under its name when its module is imported (train/task.py SHIPPED).
"""
