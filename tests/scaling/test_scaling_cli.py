"""`mlscale scaling fit` and `mlscale scaling plan` from the command line."""
from __future__ import annotations

import json

from mlscale.cli import main


def test_fit_cli_prints_json_and_writes_fit_and_plots(tmp_path, capsys, chinchilla_csv):
    out = tmp_path / "fit"
    rc = main(["scaling", "fit", str(chinchilla_csv), "--drop-highest-loss", "5", "--bootstrap", "4",
               "--starts", "5", "--out", str(out)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    for k in ("E", "A", "B", "alpha", "beta"):
        assert isinstance(printed[k], float)
        assert len(printed["ci"][k]) == 2
    assert printed["law"] == "chinchilla" and printed["n_points"] == 240
    assert "samples" not in printed["bootstrap"]  # printed JSON stays short
    saved = json.loads((out / "fit.json").read_text())
    assert saved["E"] == printed["E"] and len(saved["bootstrap"]["samples"]) == 4
    for name in ("isoflop.png", "contours.png", "optimal.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 10_000 < len(data) < 400_000

    rc = main(["scaling", "plan", "--compute", "5.76e23", "--fit", str(out / "fit.json")])
    assert rc == 0
    captured = capsys.readouterr()
    p = json.loads(captured.out)
    assert 15 < p["tokens_per_param"] < 25 and p["ci"]["N"][0] < p["N"] < p["ci"]["N"][1]
    assert "tokens/param" in captured.err


def test_plan_cli_default_law(capsys):
    assert main(["scaling", "plan", "--compute", "5.76e23"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert 15 < p["tokens_per_param"] < 25


def test_isoflop_and_kaplan_cli(tmp_path, capsys, chinchilla_csv):
    assert main(["scaling", "fit", str(chinchilla_csv), "--law", "isoflop", "--out", str(tmp_path / "iso")]) == 0
    iso = json.loads(capsys.readouterr().out)
    assert 0.4 < iso["a"] < 0.6 and (tmp_path / "iso" / "optimal.png").exists()
    assert main(["scaling", "fit", str(chinchilla_csv), "--law", "kaplan", "--starts", "3"]) == 0
    kap = json.loads(capsys.readouterr().out)
    assert {"N_c", "D_c", "alpha_N", "alpha_D"} <= set(kap)


def test_user_errors_exit_2_with_one_line(tmp_path, capsys, chinchilla_csv):
    assert main(["scaling", "fit", str(chinchilla_csv), "--n-column", "params"]) == 2
    err = capsys.readouterr().err
    assert "no column 'params'" in err and "Model Size" in err and err.count("\n") == 1
    assert main(["scaling", "fit", str(tmp_path / "none.csv")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["scaling", "plan", "--compute", "1e20", "--fit", str(tmp_path / "none.json")]) == 2
    assert main(["scaling", "fit", str(chinchilla_csv), "--model.depth=3"]) == 2
    assert "no --section.key overrides" in capsys.readouterr().err
