import math

import pytest

from mlscale.errors import ConfigError
from mlscale.config import from_dict, load_config
from mlscale.train.config import PretrainConfig, TrainConfig
from mlscale.train.schedule import lr_at


def cfg(**kw) -> TrainConfig:
    base = dict(lr=1e-3, min_lr=1e-4, warmup_steps=100, max_steps=2000)
    return from_dict(TrainConfig, {**base, **kw})


def test_warmup_is_linear_and_reaches_peak():
    c = cfg()
    assert lr_at(0, c) == pytest.approx(1e-5)
    assert lr_at(49, c) == pytest.approx(5e-4)
    assert lr_at(99, c) == pytest.approx(1e-3)
    assert all(lr_at(i, c) < lr_at(i + 1, c) for i in range(99))


def test_cosine_values():
    c = cfg()
    assert lr_at(100, c) == pytest.approx(1e-3)
    # halfway through the decay: the mean of peak and floor
    mid = 100 + (1999 - 100) / 2
    assert lr_at(int(mid), c) == pytest.approx(5.5e-4, rel=2e-3)
    assert lr_at(1999, c) == pytest.approx(1e-4)
    decay = [lr_at(i, c) for i in range(100, 2000)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    # the closed form at an arbitrary step
    s = 700
    expected = 1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * (s - 100) / 1899))
    assert lr_at(s, c) == pytest.approx(expected)


def test_wsd_holds_then_decays_linearly():
    c = cfg(schedule="wsd", decay_fraction=0.2)
    assert lr_at(100, c) == lr_at(1599, c) == pytest.approx(1e-3)
    assert lr_at(1600, c) < 1e-3
    assert lr_at(1999, c) == pytest.approx(1e-4)
    # linear: equal steps down
    d1 = lr_at(1700, c) - lr_at(1701, c)
    d2 = lr_at(1900, c) - lr_at(1901, c)
    assert d1 == pytest.approx(d2)
    assert d1 == pytest.approx(9e-4 / 400)


def test_linear_and_constant():
    lin = cfg(schedule="linear")
    assert lr_at(1999, lin) == pytest.approx(1e-4)
    assert lr_at(1049, lin) == pytest.approx(1e-3 - 9e-4 * (949 / 1899))
    const = cfg(schedule="constant")
    assert lr_at(1999, const) == 1e-3


def test_no_warmup_starts_at_peak():
    assert lr_at(0, cfg(warmup_steps=0)) == pytest.approx(1e-3)


def test_bad_schedule_settings_name_the_key():
    with pytest.raises(ConfigError, match="train.schedule: 'cosin' is not one of cosine"):
        load_config(PretrainConfig, overrides=["--train.schedule=cosin"])
    with pytest.raises(ConfigError, match="did you mean 'train.warmup_steps'"):
        load_config(PretrainConfig, overrides=["--train.warmup_step=3"])
    with pytest.raises(ConfigError, match="train.min_lr"):
        cfg(min_lr=1e-2)
    with pytest.raises(ConfigError, match="warmup_steps"):
        cfg(warmup_steps=3000)
