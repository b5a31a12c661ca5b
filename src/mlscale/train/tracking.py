"""Experiment tracking: the per-step scalars of a run, also as TensorBoard events and an
offline Weights & Biases run (`train.log_to`).

metrics.jsonl (train/metrics.py) stays the record of a run; the tracker only mirrors the
same records into the backends chosen in `train.log_to`. Each backend is an optional extra
and is imported only when chosen, so `import mlscale` never pays for it.

Wiring it into a training loop takes two lines, next to MetricsLog::

    with MetricsLog(...) as metrics, Tracker(out_dir, t.log_to, config, run_name=out_dir.name,
                                             resume_step=start_step or None,
                                             enabled=runtime.is_main) as tracker:
        ...
        metrics.write(record)
        tracker.log(record["step"], record)   # the same dict; its "step" key is skipped

`enabled=False` (non-zero ranks) makes every call a no-op; the names in `log_to` are still
checked on every rank, so a bad config fails everywhere and no rank hangs at a collective.

Backends
    "tensorboard"  event files in OUT/tensorboard/ (`tensorboard --logdir OUT/tensorboard`).
                   On resume (resume_step=k) the writer purges events after step k, so the
                   redone steps replace those of the interrupted run instead of doubling
                   them; a fresh run (resume_step=None) deletes stale event files first,
                   as MetricsLog truncates metrics.jsonl.
    "wandb"        an offline run under OUT/wandb/offline-run-*; nothing is sent anywhere
                   (mode, analytics and system-metrics sampling are all off). Its id is kept
                   in OUT/wandb-id.txt: a resumed run continues the same W&B run, a fresh run
                   gets a new id. Upload later with `wandb sync OUT/wandb/offline-run-*`.
                   W&B cannot rewind a run, so after a resume the server keeps the first
                   values it received for the redone steps; metrics.jsonl and TensorBoard
                   hold the resumed ones.
"""
from __future__ import annotations

import importlib.util
import json
import math
import numbers
import os
import secrets
import string
from pathlib import Path
from typing import Any, Mapping, Sequence

from mlscale.errors import ConfigError

BACKENDS = ("tensorboard", "wandb")
TENSORBOARD_DIR = "tensorboard"
WANDB_ID_FILE = "wandb-id.txt"
WANDB_PROJECT = "mlscale"

# The package each backend needs (tensorboard also backs torch.utils.tensorboard).
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def check_log_to(log_to: Sequence[str] | str | None) -> list[str]:
    """The backend names of `train.log_to`, in order and without repeats; a ConfigError for
    an unknown name or for a backend whose package is not installed (without importing it)."""
    if log_to is None:
        return []
    names = log_to.split(",") if isinstance(log_to, str) else list(log_to)
    chosen: list[str] = []
    for raw in names:
        name = str(raw).strip().lower()
        if not name or name in chosen:
            continue
        if name not in BACKENDS:
            raise ConfigError(f"train.log_to: unknown backend '{raw}' "
                              f"(choose from {', '.join(BACKENDS)})")
        if importlib.util.find_spec(_PACKAGES[name]) is None:
            raise ConfigError(f"train.log_to={name} needs the {_PACKAGES[name]} package: "
                              f"pip install 'mlscale[{name}]'")
        chosen.append(name)
    return chosen


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The real-number entries of a record as floats; None, bools, strings, the `step` key
    and anything else that is not a plain number are left out (NaN and inf are kept)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        out[str(key)] = float(value)
    return out


class Tracker:
    """Mirrors a run's per-step scalars into TensorBoard and/or an offline W&B run.

    out_dir      the run directory (OUT); backends write below it.
    log_to       backend names from `train.log_to` ("tensorboard", "wandb"); empty: no-op.
    config       the run's config as a plain dict (the W&B run's config).
    run_name     the run's display name (e.g. OUT's name).
    resume_step  the step a resumed run restarts after (None for a fresh run).
    enabled      False on non-zero ranks: nothing is imported, created or written.
    """

    def __init__(self, out_dir: Path, log_to: Sequence[str], config: Mapping[str, Any],
                 run_name: str, resume_step: int | None = None, enabled: bool = True):
        self.out_dir = Path(out_dir)
        self.backends = check_log_to(log_to)
        self.enabled = bool(enabled) and bool(self.backends)
        self.resume_step = resume_step
        self._tb: Any = None
        self._wandb_run: Any = None
        self._closed = False
        if not self.enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            if "tensorboard" in self.backends:
                self._tb = self._open_tensorboard()
            if "wandb" in self.backends:
                self._wandb_run = self._open_wandb(dict(config), run_name)
        except BaseException:
            self.close()
            raise

    # -- backends ---------------------------------------------------------------------------

    def _open_tensorboard(self) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = self.out_dir / TENSORBOARD_DIR
        if self.resume_step is None and log_dir.is_dir():
            for stale in log_dir.glob("events.out.tfevents.*"):
                stale.unlink()  # a fresh run starts a fresh curve, as metrics.jsonl does
        # purge_step: events at steps >= resume_step + 1 from the interrupted run are hidden,
        # so the redone steps appear once
        purge = None if self.resume_step is None else self.resume_step + 1
        return SummaryWriter(log_dir=str(log_dir), purge_step=purge)

    def _wandb_id(self) -> str:
        path = self.out_dir / WANDB_ID_FILE
        if self.resume_step is not None and path.is_file():
            run_id = path.read_text().strip()
            if run_id:
                return run_id
        alphabet = string.ascii_lowercase + string.digits
        run_id = "".join(secrets.choice(alphabet) for _ in range(8))
        path.write_text(run_id + "\n")
        return run_id

    def _open_wandb(self, config: dict[str, Any], run_name: str) -> Any:
        # before wandb reads its environment: offline, quiet, no analytics
        os.environ["WANDB_MODE"] = "offline"
        os.environ["WANDB_ERROR_REPORTING"] = "false"
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ.setdefault("WANDB_CONSOLE", "off")
        import wandb

        try:  # system-metrics sampling off too: it may probe cloud metadata endpoints
            settings = wandb.Settings(mode="offline", silent=True, console="off", x_disable_stats=True)
        except Exception:  # older wandb (<0.19) names the private settings differently
            settings = wandb.Settings(mode="offline", silent=True, console="off")
        return wandb.init(mode="offline", dir=str(self.out_dir), project=WANDB_PROJECT,
                          name=run_name, config=_plain(config), id=self._wandb_id(),
                          resume="allow", settings=settings)

    # -- use --------------------------------------------------------------------------------

    def log(self, step: int, metrics: Mapping[str, float | int | None]) -> None:
        """Record the numeric entries of `metrics` at `step` in every backend."""
        if not self.enabled or self._closed:
            return
        values = scalars(metrics)
        if not values:
            return
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, global_step=int(step))
        if self._wandb_run is not None:
            self._wandb_run.log(values, step=int(step))

    @property
    def wandb_dir(self) -> Path | None:
        """The offline W&B run's directory (OUT/wandb/offline-run-...), if one is open."""
        if self._wandb_run is None:
            return None
        return Path(self._wandb_run.dir).parent

    def close(self, failed: bool = False) -> None:
        """Flush and close every backend; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._tb is not None:
            self._tb.close()
        if self._wandb_run is not None:
            import wandb

            where = self.wandb_dir
            self._wandb_run.finish(exit_code=1 if failed else 0)
            # finish() can return before W&B's service process has written the last records
            # to the offline file; tearing the service down waits for it
            wandb.teardown()
            print(f"wandb: offline run in {where}; upload with `wandb sync {where}`", flush=True)

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(failed=exc_type is not None)


def _plain(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config as JSON values (paths and other objects as strings, non-finite as None)."""
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, Mapping):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value
    return clean(json.loads(json.dumps(config, default=str)))
