"""Compute-optimal plans from the default law and from a fit with bootstrap samples."""
from __future__ import annotations

import json

import pytest

from mlscale.errors import InputError
from mlscale.scaling.analyze import fit_table
from mlscale.scaling.plan import default_fit, load_fit, plan

CHINCHILLA_BUDGET = 5.76e23


def test_default_plan_at_chinchilla_budget_is_about_20_tokens_per_param():
    p = plan(CHINCHILLA_BUDGET)
    assert p["law"] == "chinchilla" and "Besiroglu" in p["source"]
    assert 15 < p["tokens_per_param"] < 25
    assert 6 * p["N"] * p["D"] == pytest.approx(CHINCHILLA_BUDGET)
    assert 1.9 < p["loss"] < 2.0
    assert p["ci"] is None and "--bootstrap" in p["note_ci"]


def test_plan_from_fit_json_with_intervals(tmp_path, chinchilla_table):
    body = fit_table(chinchilla_table, bootstrap=8, starts=3, seed=0, progress=False)
    path = tmp_path / "fit.json"
    path.write_text(json.dumps(body))
    p = plan(CHINCHILLA_BUDGET, load_fit(path))
    assert 15 < p["tokens_per_param"] < 25  # the acceptance criterion, from our own fit
    for k in ("N", "D", "tokens_per_param", "loss"):
        lo, hi = p["ci"][k]
        assert lo < p[k] < hi, k
    assert p["resamples"] == 8


def test_isoflop_plan_predicts_allocation_only(chinchilla_table):
    body = fit_table(chinchilla_table, law="isoflop", progress=False)
    p = plan(1e22, body)
    assert p["loss"] is None and 10 < p["tokens_per_param"] < 40


def test_load_fit_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_fit(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        load_fit(bad)
    bad.write_text(json.dumps({"law": "chinchilla", "E": 1.8}))
    with pytest.raises(InputError, match="missing the fitted parameter"):
        load_fit(bad)
    bad.write_text(json.dumps({"law": "gpt"}))
    with pytest.raises(InputError, match="expected one of"):
        load_fit(bad)
    with pytest.raises(InputError, match="positive"):
        plan(-1.0, default_fit())
