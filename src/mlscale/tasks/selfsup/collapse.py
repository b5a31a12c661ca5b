"""Collapse: when every image gets the same embedding, pretraining has failed silently.

Two signatures, watched every step on the statistics the tasks log:
- `spread`: the per-dimension standard deviation of the L2-normalised embeddings, times
  sqrt(D): about 1 when they spread over the sphere, 0 when they sit on one point;
- for DINO, the teacher's entropy pinned near ln K (its output is flat: the target says
  nothing; sharpening too weak, and the loss stays pinned near ln K), and the KL from the
  teacher's distribution to the student's falling to 0 (the student matches a teacher
  that says nothing; with the entropy near 0 it is one prototype taking every image,
  centering too weak).

A signature must hold for `patience` consecutive steps before the run stops, with a
message that says which one and what to change.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from mlscale.config import option
from mlscale.errors import MlscaleError


class TrainingCollapsed(MlscaleError):
    """Self-supervised pretraining collapsed to a constant embedding."""


@dataclass
class CollapseOptions:
    check: bool = option(True, "stop the run when a collapse signature lasts `patience` steps")
    min_spread: float = option(0.02, "collapse when the embeddings' normalised spread (1 = spread "
                               "over the sphere, 0 = one point) stays below this", min=0.0)
    min_kl: float = option(1e-3, "DINO: collapse when the teacher-to-student KL stays below this", min=0.0)
    max_entropy: float = option(0.98, "DINO: collapse when the teacher's entropy stays above this share "
                                "of ln K (a flat teacher)", min=0.0, max=1.0)
    patience: int = option(50, "consecutive steps a signature must hold", min=1)


class CollapseWatch:
    """Counts how long each signature has held; raises TrainingCollapsed when one lasts."""

    def __init__(self, options: CollapseOptions, method: str, prototypes: int = 0):
        self.options, self.method, self.prototypes = options, method, prototypes
        self.runs: dict[str, int] = {"spread": 0, "kl": 0, "flat": 0}

    def update(self, step: int, stats: dict[str, float]) -> None:
        o = self.options
        if not o.check:
            return
        top = math.log(max(self.prototypes, 1))
        held = {"spread": stats.get("spread", math.inf) < o.min_spread,
                "kl": stats.get("teacher_kl", math.inf) < o.min_kl,
                "flat": self.prototypes > 1 and stats.get("teacher_entropy", 0.0) > o.max_entropy * top}
        for name, now in held.items():
            self.runs[name] = self.runs[name] + 1 if now else 0
        if self.runs["kl"] >= o.patience or self.runs["flat"] >= o.patience:
            raise TrainingCollapsed(self._kl_message(step, stats))
        if self.runs["spread"] >= o.patience:
            raise TrainingCollapsed(self._spread_message(step, stats))

    def _kl_message(self, step: int, stats: dict[str, float]) -> str:
        entropy, top = stats.get("teacher_entropy", float("nan")), math.log(max(self.prototypes, 1))
        head = (f"step {step}: DINO collapsed: for {self.options.patience} steps the teacher's entropy has been "
                f"{entropy:.3f} (ln K = {top:.3f}) and the teacher-to-student KL "
                f"{stats.get('teacher_kl', float('nan')):.2e}")
        if entropy > 0.5 * top:
            return (head + ": the teacher's output is flat, every image gets the uniform distribution. "
                    "Sharpening is too weak: lower dino.teacher_temp (0.04 to 0.07) and "
                    "dino.warmup_teacher_temp; keep dino.student_temp at 0.1")
        return (head + ": one prototype takes every image. Centering is too weak: set dino.center_momentum "
                "below 1 (0.9), or raise dino.teacher_temp a little")

    def _spread_message(self, step: int, stats: dict[str, float]) -> str:
        fix = {"simclr": "lower simclr.temperature (0.1 to 0.5), raise train.batch_size (more negatives) "
                         "or lower train.lr",
               "dino": "lower dino.teacher_temp, keep centering on (dino.center_momentum < 1) and lower train.lr",
               "mae": "lower train.lr or raise train.warmup_steps"}.get(self.method, "lower train.lr")
        return (f"step {step}: {self.method} collapsed: every image gets nearly the same embedding (normalised "
                f"spread {stats.get('spread', float('nan')):.4f} < {self.options.min_spread} for "
                f"{self.options.patience} steps). To fix: {fix}")
