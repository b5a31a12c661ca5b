import pytest
import torch

from mlscale.errors import ConfigError
from mlscale.runtime.device import PEAK_FLOPS, peak_flops, resolve_device, resolve_dtype


def test_cpu_defaults_to_fp32_and_has_no_peak():
    cpu = resolve_device("cpu")
    assert cpu.type == "cpu"
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert peak_flops(cpu, torch.float32) is None  # MFU is "n/a" on CPUs


def test_missing_devices_are_config_errors():
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.device=cuda"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="train.device"):
        resolve_device("tpu")


def test_peak_table_has_the_anchor_figures():
    table = dict(PEAK_FLOPS)
    assert table["H100"]["bf16"] == 989e12 and table["A100"]["bf16"] == 312e12
    # the specific names come before the general ones they contain
    names = [n for n, _ in PEAK_FLOPS]
    assert names.index("H100 PCIe") < names.index("H100") and names.index("A10G") < names.index("A10")
