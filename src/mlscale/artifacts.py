"""Stage output directories: atomic writes, completion markers, fingerprints, manifests.

A stage owns one output directory laid out as

    OUT/stage.json        what the stage was started with (config + input fingerprints)
    OUT/.done/<unit>      one marker per completed work unit (JSON payload)
    OUT/manifest.json     written last and atomically: the stage is complete

Re-running a finished stage with the same config and inputs is a no-op; an interrupted
stage finds its markers and skips completed units; a different config on an existing
directory is an error that names the keys that differ and says to use --force.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import xxhash

from mlscale import __version__
from mlscale.config import diff
from mlscale.errors import ArtifactError, MlscaleError, check_out_dir, read_text

MANIFEST = "manifest.json"
STAGE = "stage.json"
DONE_DIR = ".done"


# ------------------------------------------------------------------------ atomic writes
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: str | Path, path: Path) -> None:
    """Give the temp file the usual permissions (mkstemp makes it 0600) and rename it."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


class atomic_path:
    """Context manager yielding a temp path that is renamed onto `path` on success.

    For writers that want a file name (pyarrow, safetensors, torch.save):
        with atomic_path(out / "part-00000.parquet") as tmp:
            pq.write_table(table, tmp)
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            with open(self.tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            _publish(self.tmp, self.path)
        elif self.tmp.exists():
            self.tmp.unlink()


def read_json(path: str | Path, what: str = "file", hint: str = "rerun the stage that made it",
              error: type[MlscaleError] = ArtifactError) -> Any:
    """Read JSON; a missing, empty, non-text or corrupt file is `error` naming the file,
    with `hint` saying what to do."""
    path = Path(path)
    text = read_text(path, what, hint, error=error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path} is corrupt ({e}); {hint}") from None


# -------------------------------------------------------------------------- fingerprints
def fingerprint_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """xxh3-128 of a file's bytes (GB/s, so cheap even for large inputs)."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def fingerprint_paths(paths: Iterable[str | Path]) -> dict[str, str]:
    """Fingerprint every file under the given files/directories: {path: hash}."""
    out: dict[str, str] = {}
    for p in paths:
        p = Path(p)
        if not p.is_dir():
            out[str(p)] = fingerprint_file(p)
            continue
        for f in sorted(p.rglob("*")):
            # hidden files (markers, temp files) are bookkeeping, not content
            if f.is_file() and not any(s.startswith(".") for s in f.relative_to(p).parts):
                out[str(f)] = fingerprint_file(f)
    return out


def fingerprint_obj(obj: Any) -> str:
    """Stable hash of a JSON-able object (configs, lists of fingerprints)."""
    return xxhash.xxh3_128(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def environment() -> dict[str, Any]:
    """Versions and machine facts recorded in every manifest."""
    env: dict[str, Any] = {
        "mlscale": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    # the installed version without importing torch (seconds of start-up for the stages
    # that never use it, e.g. curate); the GPU only where a stage has imported torch
    try:
        from importlib.metadata import PackageNotFoundError, version

        env["torch"] = version("torch")
    except PackageNotFoundError:  # pragma: no cover
        pass
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


# ---------------------------------------------------------------------------- stage dirs
@dataclass
class StageDir:
    """One stage's output directory, with its start record and work-unit markers."""

    path: Path
    stage: str
    config: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    @classmethod
    def open(
        cls,
        path: str | Path,
        stage: str,
        config: dict[str, Any],
        inputs: dict[str, str] | None = None,
        force: bool = False,
    ) -> "StageDir":
        """Create or reopen `path` for `stage`.

        Fails if the directory holds another stage, another config or other inputs, unless
        `force`, which deletes it and starts over.
        """
        path = check_out_dir(path)  # a file there is refused, --force or not
        sd = cls(path=path, stage=stage, config=config, inputs=dict(inputs or {}))
        rec = path / STAGE
        if force and path.exists():
            shutil.rmtree(path)
        if rec.exists():
            old = read_json(rec, f"mlscale {stage} record",
                            "use --force to start over there, or choose another --out")
            if not isinstance(old, dict):
                raise ArtifactError(f"{rec} is corrupt (not a JSON object); use --force to start "
                                    "over there, or choose another --out")
            problems = []
            if old.get("stage") != stage:
                problems.append(f"it holds the output of '{old.get('stage')}', not '{stage}'")
            problems += [f"config {d}" for d in diff(old.get("config", {}), config)]
            old_inputs, new_inputs = old.get("inputs", {}), sd.inputs
            if old_inputs != new_inputs:
                changed = sorted(k for k in set(old_inputs) | set(new_inputs)
                                 if old_inputs.get(k) != new_inputs.get(k))
                problems.append("inputs changed: " + ", ".join(changed[:5])
                                + (" ..." if len(changed) > 5 else ""))
            if problems:
                raise ArtifactError(
                    f"{path} was made with a different setup ({'; '.join(problems)}). "
                    "Use --force to start over there, or choose another --out."
                )
        elif path.exists() and any(path.iterdir()):
            raise ArtifactError(
                f"{path} exists and is not a mlscale {stage} output; choose another --out "
                "or use --force to delete it and start over"
            )
        else:
            path.mkdir(parents=True, exist_ok=True)
            atomic_write_json(rec, {"stage": stage, "config": config, "inputs": sd.inputs,
                                    "started": sd.started})
        return sd

    # -- completion ------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        """True when the manifest exists: the stage finished with this config."""
        return (self.path / MANIFEST).exists()

    def manifest(self) -> dict[str, Any]:
        return read_json(self.path / MANIFEST)

    def write_manifest(self, body: dict[str, Any]) -> dict[str, Any]:
        """Write manifest.json last and atomically; adds config, inputs, env, timing."""
        manifest = {
            "stage": self.stage,
            **body,
            "config": self.config,
            "inputs": self.inputs,
            "environment": environment(),
            "seconds": round(time.time() - self.started, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write_json(self.path / MANIFEST, manifest)
        return manifest

    # -- work units ------------------------------------------------------------------
    def unit_done(self, unit: str) -> bool:
        return (self.path / DONE_DIR / unit).exists()

    def mark_done(self, unit: str, payload: dict[str, Any] | None = None) -> None:
        """Record that `unit` completed (after its outputs were atomically written)."""
        atomic_write_json(self.path / DONE_DIR / unit, payload or {})

    def unit_payload(self, unit: str) -> dict[str, Any]:
        return read_json(self.path / DONE_DIR / unit)

    def done_units(self) -> list[str]:
        d = self.path / DONE_DIR
        return sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) if d.exists() else []
