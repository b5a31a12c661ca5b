"""What a run reports: one console line per step and RUN/metrics.jsonl (one object per event)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, TextIO


def format_duration(seconds: float) -> str:
    """`3h02m`, `4m05s`, `12s`."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def format_count(x: float) -> str:
    """`950`, `11.5k`, `2.31M`."""
    if x >= 1e9:
        return f"{x / 1e9:.2f}G"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def step_line(step: int, max_steps: int, loss: float, lr: float, tokens_per_s: float,
              mfu: float | None, eta_s: float, grad_norm: float | None = None,
              unit: str = "tok") -> str:
    """The one line printed per training step (throughput in `unit`s per second)."""
    width = len(str(max_steps))
    parts = [
        f"step {step:>{width}}/{max_steps}",
        f"loss {loss:.4f}",
        f"lr {lr:.2e}",
    ]
    if grad_norm is not None:
        parts.append(f"gnorm {grad_norm:.3f}")
    parts += [
        f"{format_count(tokens_per_s)} {unit}/s",
        f"MFU {mfu * 100:.1f}%" if mfu is not None else "MFU n/a",
        f"ETA {format_duration(eta_s)}",
    ]
    return " | ".join(parts)


class MetricsLog:
    """Appends JSON records to RUN/metrics.jsonl, one per line, flushed as written.

    On resume, records after the resumed step are dropped first: they belong to the part
    of the interrupted run that is being redone, and keeping them would duplicate steps.
    """

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)
        self._fh: TextIO = self.path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, allow_nan=True) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
