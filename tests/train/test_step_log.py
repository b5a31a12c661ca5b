import json

from mlscale.train.metrics import MetricsLog, format_duration, read_metrics, step_line


def test_step_line_fields():
    line = step_line(12, 2000, 2.345678, 1e-3, 11500.0, None, 152.4, grad_norm=0.5)
    assert line.startswith("step   12/2000")
    for part in ("loss 2.3457", "lr 1.00e-03", "11.5k tok/s", "MFU n/a", "ETA 2m32s", "gnorm 0.500"):
        assert part in line
    assert "MFU 45.3%" in step_line(1, 10, 1.0, 1e-3, 1e6, 0.453, 5.0)


def test_format_duration():
    assert format_duration(5) == "5s"
    assert format_duration(3725) == "1h02m"
    assert format_duration(float("nan")) == "?"


def test_metrics_log_truncates_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path) as m:
        for s in range(1, 6):
            m.write({"step": s, "train_loss": 1.0 / s})
        m.write({"step": 5, "val_loss": 0.3})
    with MetricsLog(path, resume_step=3) as m:
        m.write({"step": 4, "train_loss": 9.0})
    recs = read_metrics(path)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert recs[-1]["train_loss"] == 9.0
    assert all(json.dumps(r) for r in recs)
    # a fresh start empties the file
    MetricsLog(path).close()
    assert read_metrics(path) == []
