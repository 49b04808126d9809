"""--precision: bfloat16 autocast only where the device computes it natively (graft.finetune.precision)."""

from __future__ import annotations

import pytest
import torch

import graft.finetune.precision as precision
from graft.errors import GraftError
from graft.recipe.config import TrainConfig


def test_auto_follows_the_cpu_and_an_explicit_choice_wins(monkeypatch):
    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        assert precision.uses_bf16(cpu, "auto") is native
        assert precision.uses_bf16(cpu, "bf16") and not precision.uses_bf16(cpu, "fp32")
    assert precision.uses_bf16(torch.device("cuda"), "auto")
    with pytest.raises(GraftError, match="auto, bf16 or fp32"):
        precision.uses_bf16(cpu, "fp16")


def test_the_step_computes_in_what_was_chosen():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 8, 8)
    with precision.autocast(torch.device("cpu"), "bf16"):
        assert conv(x).dtype == torch.bfloat16
    with precision.autocast(torch.device("cpu"), "fp32"):
        assert conv(x).dtype == torch.float32


def test_the_setting_reaches_fine_tuning_and_refuses_nonsense():
    from graft.recipe.config import validate
    from graft.recipe.strategy import StrategyChoice

    cfg = TrainConfig(precision="fp32")
    assert cfg.finetune_config(StrategyChoice("partial", 2, "")).precision == "fp32"
    assert TrainConfig().precision == "auto"
    with pytest.raises(GraftError, match="precision must be auto, bf16 or fp32"):
        validate(TrainConfig(precision="fp16"))


def test_cpuinfo_is_read_for_the_flags():
    from pathlib import Path

    info = Path("/proc/cpuinfo")
    if not info.is_file():
        pytest.skip("no /proc/cpuinfo: auto keeps float32 on the CPU")
    words = set(info.read_text(errors="replace").split())
    precision.cpu_has_native_bf16.cache_clear()
    assert precision.cpu_has_native_bf16() == bool(words & {"avx512_bf16", "amx_bf16"})
