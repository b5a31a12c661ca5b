"""Experiment tracking (train/tracking.py): TensorBoard events and offline W&B runs, read back."""
from __future__ import annotations

import importlib.util
import json
import socket
import struct
import subprocess
import sys
import time

import pytest

from mlscale.errors import ConfigError
from mlscale.train.tracking import Tracker, check_log_to, scalars


def record(step, loss):
    """A record shaped like the trainer's metrics.jsonl line."""
    return {"step": step, "train_loss": loss, "lr": 1e-3, "grad_norm": None, "mfu": None,
            "tokens": 64 * step, "device": "cpu", "clipped": True}


# -- names, no-ops, lazy imports -------------------------------------------------------------

@pytest.mark.parametrize("log_to", [["mlflow"], ["tensorboard", "comet"], "tensorboard,nope"])
def test_unknown_backend_is_a_config_error(tmp_path, log_to):
    with pytest.raises(ConfigError, match=r"train\.log_to.*unknown backend.*tensorboard, wandb"):
        Tracker(tmp_path, log_to, {}, "r")
    with pytest.raises(ConfigError):  # every rank checks, so no rank waits on a failed one
        Tracker(tmp_path, log_to, {}, "r", enabled=False)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("backend", ["tensorboard", "wandb"])
def test_missing_package_says_what_to_install(tmp_path, monkeypatch, backend):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == backend else real(name, *a))
    with pytest.raises(ConfigError, match=rf"train\.log_to.*pip install 'mlscale\[{backend}\]'"):
        Tracker(tmp_path, [backend], {}, "r")


def test_names_are_normalised():
    assert check_log_to(None) == [] and check_log_to([]) == []
    assert check_log_to(["TensorBoard", "tensorboard", " wandb"]) == ["tensorboard", "wandb"]
    assert check_log_to("wandb,tensorboard") == ["wandb", "tensorboard"]


def test_only_numbers_are_logged():
    got = scalars(record(3, float("nan")) | {"val_loss": 2, "np": __import__("numpy").float32(0.5)})
    assert set(got) == {"train_loss", "lr", "tokens", "val_loss", "np"}
    assert got["tokens"] == 192.0 and got["np"] == 0.5 and got["train_loss"] != got["train_loss"]


def test_disabled_or_empty_tracker_does_nothing(tmp_path):
    for tracker in (Tracker(tmp_path, ["tensorboard", "wandb"], {}, "r", enabled=False),
                    Tracker(tmp_path, [], {}, "r")):
        with tracker:
            tracker.log(1, record(1, 1.0))
    assert not any(tmp_path.iterdir())


def test_importing_the_module_imports_no_backend():
    code = ("import sys, mlscale.train.tracking as t; t.Tracker('.', [], {}, 'r'); "
            "print([m for m in ('wandb', 'tensorboard', 'torch.utils.tensorboard') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- TensorBoard ----------------------------------------------------------------------------

def tb_scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_scalars_resume_and_fresh_start(tmp_path):
    with Tracker(tmp_path, ["tensorboard"], {"lr": 1e-3}, "r") as tb:
        for step in range(1, 7):  # the interrupted run got to step 6, its checkpoint to step 4
            tb.log(step, record(step, 10.0 + step))
        tb.log(4, {"step": 4, "val_loss": 3.5})
    got = tb_scalars(tmp_path / "tensorboard")
    assert set(got) == {"train_loss", "lr", "tokens", "val_loss"}  # None and strings skipped
    assert got["train_loss"] == [(s, pytest.approx(10.0 + s)) for s in range(1, 7)]
    assert got["val_loss"] == [(4, 3.5)]

    with Tracker(tmp_path, ["tensorboard"], {"lr": 1e-3}, "r", resume_step=4) as tb:
        for step in range(5, 9):
            tb.log(step, record(step, 20.0 + step))
    got = tb_scalars(tmp_path / "tensorboard")
    assert [s for s, _ in got["train_loss"]] == list(range(1, 9))  # one value per step
    assert [v for _, v in got["train_loss"]] == pytest.approx([11, 12, 13, 14, 25, 26, 27, 28])
    assert got["val_loss"] == [(4, 3.5)]  # kept: at or before the resumed step

    with Tracker(tmp_path, ["tensorboard"], {}, "r") as tb:  # a fresh run (--force) starts over
        tb.log(1, record(1, 0.5))
    assert tb_scalars(tmp_path / "tensorboard")["train_loss"] == [(1, 0.5)]


# -- Weights & Biases, offline ----------------------------------------------------------------

def wandb_records(path):
    """The records of a .wandb file: a LevelDB-style log (7-byte file header, 32 KiB blocks,
    chunks of crc32c:u32, length:u16, type:u8) of wandb_internal_pb2.Record messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B"
    pos, pending, out = 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (kind == 0 and length == 0):  # block trailer or padding
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a whole record
            rec = pb.Record()
            rec.ParseFromString(pending)
            out.append(rec)
            pending = b""
    return out


def wandb_history(path):
    rows = {}
    for rec in wandb_records(path):
        if rec.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
            rows[rec.history.step.num] = {k: v for k, v in items.items() if not k.startswith("_")}
    return rows


def wandb_run_record(path):
    return next(r.run for r in wandb_records(path) if r.WhichOneof("record_type") == "run")


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B offline, its config and caches under tmp_path, and every socket watched."""
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
                       "WANDB_ERROR_REPORTING": "false", "WANDB_API_KEY": ""}.items():
        monkeypatch.setenv(key, value)  # also restores what the tracker sets
    for key in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(key, str(tmp_path / "wandb-home" / key.lower()))
    remote = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(sock, address):
        if sock.family != socket.AF_UNIX and address[0] not in ("127.0.0.1", "::1", "localhost"):
            remote.append(address)
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in ("127.0.0.1", "::1", "localhost", None):
            remote.append(host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield tmp_path / "run", remote


def test_wandb_offline_run_resumes_the_same_run(offline_wandb, capsys):
    out, remote = offline_wandb
    config = {"model": {"d_model": 64}, "train": {"lr": 1e-3, "log_to": ["wandb"]}, "data": out}
    with Tracker(out, ["wandb"], config, "tiny-run") as tracker:
        for step in range(1, 7):
            tracker.log(step, record(step, 10.0 + step))
        tracker.log(6, {"step": 6, "val_loss": 3.5})
    run_id = (out / "wandb-id.txt").read_text().strip()
    first = tracker.wandb_dir
    assert first.parent == out / "wandb" and first.name.startswith("offline-run-")
    assert first.name.endswith(run_id)
    time.sleep(1.02 - time.time() % 1)  # W&B names run folders by the second they start

    with Tracker(out, ["wandb", "tensorboard"], config, "tiny-run", resume_step=4) as tracker:
        for step in range(5, 9):
            tracker.log(step, record(step, 20.0 + step))
    second = tracker.wandb_dir
    assert (out / "wandb-id.txt").read_text().strip() == run_id and second != first
    assert second.name.endswith(run_id)

    assert sorted(p.name for p in (out / "wandb").glob("*run-*")) == sorted([first.name, second.name])
    assert not list((out / "wandb").glob("run-*"))  # no online run folder
    assert remote == []  # no network call from this process

    one, two = (wandb_records(d / f"run-{run_id}.wandb") for d in (first, second))
    assert one and two
    run = wandb_run_record(first / f"run-{run_id}.wandb")
    assert run.run_id == run_id and run.display_name == "tiny-run" and run.project == "mlscale"
    cfg = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert cfg["model"] == {"d_model": 64} and cfg["data"] == str(out)

    h1 = wandb_history(first / f"run-{run_id}.wandb")
    assert sorted(h1) == list(range(1, 7))
    assert h1[3] == {"train_loss": 13.0, "lr": 1e-3, "tokens": 192}
    assert h1[6]["val_loss"] == 3.5 and h1[6]["train_loss"] == 16.0  # same step: one row
    h2 = wandb_history(second / f"run-{run_id}.wandb")
    assert sorted(h2) == [5, 6, 7, 8] and h2[8]["train_loss"] == 28.0
    assert wandb_run_record(second / f"run-{run_id}.wandb").run_id == run_id

    printed = capsys.readouterr()
    assert printed.err == ""
    assert printed.out.splitlines() == [f"wandb: offline run in {d}; upload with `wandb sync {d}`"
                                        for d in (first, second)]

    with Tracker(out, ["wandb"], config, "tiny-run") as tracker:  # fresh run: a new W&B run
        tracker.log(1, record(1, 1.0))
    assert (out / "wandb-id.txt").read_text().strip() != run_id
