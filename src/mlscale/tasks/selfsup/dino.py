"""DINO (Caron et al. 2021): a student learns to match an EMA teacher across crops.

Each image gives 2 global crops (seen by teacher and student) and N smaller local crops
(student only). Both networks are backbone -> DINOHead (K prototypes); the student's
softmax at temperature 0.1 must match the teacher's centred, sharpened softmax for every
pair of different crops. The teacher is an exponential moving average of the student
(momentum from 0.996 to 1 on a cosine), its temperature warms up linearly, its outputs
are centred by an EMA of their mean (over all ranks). The head's prototypes stay frozen
for the first epoch; weight decay follows its cosine (train.weight_decay_end); gradients
are clipped (train.grad_clip). Register tokens (model.registers) are the backbone's.

The teacher, not the student, is the model kept and probed (as the paper evaluates).
Logged each step: the teacher's entropy and the teacher-to-student KL, whose fall to
zero is the collapse the run stops on (collapse.py).

    mlscale train --task dino --data IMAGES --out RUN
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mlscale.config import option
from mlscale.model.registry import family_of
from mlscale.runtime.device import autocast
from mlscale.tasks.selfsup import views
from mlscale.tasks.selfsup.base import SelfSupervised, SelfSupervisedConfig, backbone_config, feature_dim, spread
from mlscale.tasks.selfsup.heads import DINOHead, Pretraining
from mlscale.tasks.selfsup.losses import (dino_loss, teacher_entropy, teacher_momentum, teacher_temperature,
                                          update_center)
from mlscale.train.task import register_task


@dataclass
class DINOOptions:
    out_dim: int = option(65536, "K, the number of prototypes the head projects onto", min=2)
    hidden: int = option(2048, "width of the head's MLP", min=1)
    bottleneck: int = option(256, "width of the L2-normalised bottleneck", min=1)
    teacher_temp: float = option(0.04, "teacher temperature after the warmup (sharpening)", min=1e-4)
    warmup_teacher_temp: float = option(0.04, "teacher temperature at step 0", min=1e-4)
    warmup_teacher_temp_steps: int = option(0, "steps of the linear teacher-temperature warmup", min=0)
    student_temp: float = option(0.1, "student temperature", min=1e-4)
    center: bool = option(True, "center the teacher's outputs (off only to study collapse)")
    center_momentum: float = option(0.9, "EMA momentum of the center", min=0.0, max=1.0)
    momentum_teacher: float = option(0.996, "teacher EMA momentum at step 0 (cosine to 1)", min=0.0, max=1.0)
    local_crops: int = option(6, "local crops per image (student only)", min=0)
    freeze_last_layer_steps: int = option(-1, "steps the prototypes stay frozen; -1 = one epoch", min=-1)
    first_blur: float = option(1.0, "blur probability of the first global crop", min=0.0, max=1.0)
    second_blur: float = option(0.1, "blur probability of the second global crop", min=0.0, max=1.0)
    second_solarize: float = option(0.2, "solarisation probability of the second global crop", min=0.0, max=1.0)


def _global_views() -> views.ViewSpec:
    return views.ViewSpec(min_scale=0.4)


def _local_views() -> views.ViewSpec:
    return views.ViewSpec(size=12, min_scale=0.05, max_scale=0.4)


@dataclass
class DINOConfig(SelfSupervisedConfig):
    """Everything `mlscale train --task dino` is configured by; saved as RUN/config.json."""

    views: views.ViewSpec = option(default_factory=_global_views, help="the two global crops (blur and "
                                   "solarisation: dino.first_blur, second_blur, second_solarize)")
    dino: DINOOptions = option(default_factory=DINOOptions, help="head, teacher, centering, crops")
    local_views: views.ViewSpec = option(default_factory=_local_views, help="the local crops (size: a "
                                         "multiple of the patch)")


@register_task
class DINO(SelfSupervised):
    """Self-distillation with no labels: student vs EMA teacher over multi-crop views."""

    name = "dino"
    config_cls = DINOConfig

    @classmethod
    def build_network(cls, cfg: DINOConfig) -> nn.Module:
        backbone = family_of(cfg.model).build(backbone_config(cfg.model))
        d = cfg.dino
        return Pretraining(backbone, DINOHead(feature_dim(cfg.model), d.out_dim, d.hidden, d.bottleneck))

    def __init__(self, cfg: DINOConfig, data: Any, runtime: Any, base: Any = None):
        super().__init__(cfg, data, runtime, base)
        self.views_per_image = 2 + cfg.dino.local_crops  # type: ignore[misc]
        self.teacher: nn.Module | None = None
        self.center = torch.zeros(1, cfg.dino.out_dim, device=runtime.device)
        self._loaded: dict[str, Tensor] = {}
        size = cfg.train.batch_size * runtime.env.dp_size
        epoch = -(-len(self.train_split) // size)
        self.freeze_steps = epoch if cfg.dino.freeze_last_layer_steps < 0 else cfg.dino.freeze_last_layer_steps

    def flops_per_unit(self, model: nn.Module) -> float:
        """Student on every crop (local ones at their size), teacher forward on the global ones."""
        b, size, local = model.backbone, self.cfg.model.image_size, self.cfg.local_views.size
        head = sum(p.numel() for p in model.head.parameters())
        student = 2 * b.flops_per_image(size) + self.cfg.dino.local_crops * b.flops_per_image(local or size)
        teacher = 2 * (b.flops_per_image(size) + 6 * head) / 3  # forward only: a third of 6 N
        return float(student + 6 * head * self.views_per_image + teacher)

    def on_start(self, model: nn.Module, out_dir: Any) -> None:
        super().on_start(model, out_dir)
        # a copy of the student as it runs (fused modules, BatchNorm over the ranks); the
        # process groups those hold are shared, not copied
        groups = {id(m.group): m.group for m in model.modules() if getattr(m, "group", None) is not None}
        self.teacher = copy.deepcopy(model, memo=groups)
        self.teacher.requires_grad_(False)
        if self._loaded:
            self.teacher.load_state_dict({k[len("teacher."):]: v for k, v in self._loaded.items()
                                          if k.startswith("teacher.")})
            self.center = self._loaded["center"].to(self.center.device)

    # -- batches -------------------------------------------------------------------------
    def batch(self, index: int) -> dict[str, Any]:
        """2 global and `local_crops` local crops of each image; draws for the global batch."""
        c = self.cfg
        rows, mine, rng = self.rows(index)
        H, W, _ = self.images.shape
        first = views.ViewSpec(**{**vars(c.views), "blur_prob": c.dino.first_blur})
        second = views.ViewSpec(**{**vars(c.views), "blur_prob": c.dino.second_blur,
                                   "solarize_prob": c.dino.second_solarize})
        specs = [first, second] + [c.local_views] * c.dino.local_crops
        params = [views.draw(s, len(rows), H, W, rng).take(mine) for s in specs]
        pixels = self.pixels(rows[mine])
        out = [views.render(pixels, p, s, self.mean, self.std, self.runtime.device) for p, s in zip(params, specs)]
        return {"views": out, "step": index // c.train.grad_accum}

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        d, crops = self.cfg.dino, batch["views"]
        n = crops[0].shape[0]
        t_temp = teacher_temperature(batch["step"], d.warmup_teacher_temp_steps, d.warmup_teacher_temp,
                                     d.teacher_temp)
        with autocast(self.runtime.device, self.runtime.dtype):
            with torch.no_grad():
                _, t_out = self.teacher(crops[:2])
            h, s_out = model(crops)
        teacher = t_out.float().view(2, n, -1)
        student = s_out.float().view(len(crops), n, -1)
        center = self.center if d.center else torch.zeros_like(self.center)
        loss = dino_loss(teacher, student, center, t_temp, d.student_temp)
        entropy = teacher_entropy(teacher, center, t_temp)
        kl = loss.detach() - entropy  # cross entropy = entropy + KL, over the same pairs
        if d.center:
            self.center = update_center(self.center, teacher, d.center_momentum, self.runtime.env)
        stats = self.keep_stats(spread=spread(h[:n]), teacher_entropy=entropy, teacher_kl=kl)
        return loss, {**stats, "teacher_temp": t_temp}

    def before_update(self, model: nn.Module, step: int) -> None:
        if step <= self.freeze_steps:  # DINO: the prototypes move only after the first epoch
            model.head.prototypes.grad = None

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> None:
        m = teacher_momentum(step - 1, self.cfg.train.max_steps, self.cfg.dino.momentum_teacher)
        for t, s in zip(self.teacher.parameters(), model.parameters()):
            t.lerp_(s.detach(), 1 - m)
        super().after_step(model, step)

    # -- state ---------------------------------------------------------------------------
    def evaluated_backbone(self, model: nn.Module) -> nn.Module:
        return self.teacher.backbone

    def tensors(self) -> dict[str, Tensor]:
        state = {f"teacher.{k}": v for k, v in self.teacher.state_dict().items()}
        return {**state, "center": self.center}

    def load_tensors(self, tensors: dict[str, Tensor]) -> None:
        """A checkpoint's teacher and center; `on_start` (after it) puts them in place."""
        self._loaded = dict(tensors)
