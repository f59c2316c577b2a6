"""The precision policy: bf16 only where the hardware computes it natively, the reason logged once and recorded."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from longctx import precision as policy
from longctx.common import LongctxError


@pytest.fixture(autouse=True)
def fresh_policy():
    policy.cpu_bf16.cache_clear()
    policy._announced.clear()
    yield
    policy.cpu_bf16.cache_clear()
    policy._announced.clear()


def fake_cpu(monkeypatch, *, flags: dict, capability: str = "AVX512", speedup: float = 2.0):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(policy, "_probe_bf16_speedup", lambda: speedup)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)


def test_cpu_without_native_bf16_runs_fp32(monkeypatch):
    fake_cpu(monkeypatch, flags={"avx2": True}, capability="AVX2")
    chosen = policy.resolve_precision("auto")
    assert (chosen.name, chosen.device) == ("fp32", "cpu")
    assert "without native bf16" in chosen.reason and chosen.reason.endswith("-> fp32")
    assert chosen.trainer_flags() == {"bf16": False, "fp16": False, "use_cpu": True}


def test_cpu_with_native_bf16_runs_bf16(monkeypatch):
    fake_cpu(monkeypatch, flags={"avx512_bf16": True})
    chosen = policy.resolve_precision("auto")
    assert chosen.name == "bf16" and "native bf16" in chosen.reason
    assert chosen.trainer_flags()["bf16"] and chosen.autocast_dtype() is torch.bfloat16


@pytest.mark.parametrize("capability, env, speedup, why", [
    ("AVX2", {}, 2.0, "AVX2 kernels"),                                # ATEN_CPU_CAPABILITY=avx2
    ("AVX512", {"ONEDNN_MAX_CPU_ISA": "AVX2"}, 2.0, "oneDNN is capped"),
    ("AVX512", {}, 0.5, "measured 2.0x slower"),                      # flags say yes, the probe says no
])
def test_flags_alone_are_not_enough(monkeypatch, capability, env, speedup, why):
    fake_cpu(monkeypatch, flags={"avx512_bf16": True}, capability=capability, speedup=speedup)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    chosen = policy.resolve_precision("auto")
    assert chosen.name == "fp32" and why in chosen.reason


def test_explicit_bf16_on_emulating_cpu_runs_and_warns_once(monkeypatch):
    fake_cpu(monkeypatch, flags={"avx2": True}, capability="AVX2")
    said = []
    monkeypatch.setattr(policy.log, "warning", lambda msg, *args: said.append(msg % args))
    for _ in range(3):
        chosen = policy.resolve_precision("bf16")
    assert chosen.name == "bf16" and "emulated" in chosen.reason
    assert len(said) == 1 and "10-20x slower than fp32" in said[0] and "AVX2" in said[0]


def test_fp16_refused_on_cpu_and_bad_names(monkeypatch):
    fake_cpu(monkeypatch, flags={})
    with pytest.raises(LongctxError, match="fp16 needs a CUDA GPU"):
        policy.resolve_precision("fp16")
    with pytest.raises(LongctxError, match="precision must be one of"):
        policy.resolve_precision("half")


@pytest.mark.parametrize("bf16, fp16_ok, expected", [(True, True, "bf16"), (False, True, "fp16"),
                                                      (False, False, "fp32")])
def test_cuda_policy(monkeypatch, bf16, fp16_ok, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    chosen = policy.resolve_precision("auto", fp16_ok=fp16_ok)
    assert (chosen.name, chosen.device) == (expected, "cuda") and "Fake GPU" in chosen.reason
    assert chosen.trainer_flags()["use_cpu"] is False


def test_real_avx2_kernels_pick_fp32_in_a_fresh_process():
    """The real thing, not a monkeypatch: torch limited to AVX2 kernels, as on an AVX2-only CPU."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    code = ("import json; from longctx.common import setup_logging; setup_logging(); "
            "from longctx.precision import resolve_precision as r; p = r('auto'); "
            "print(json.dumps(p.record()))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    record = json.loads(out.stdout.strip().splitlines()[-1])
    assert record["name"] == "fp32" and record["device"] == "cpu"
    assert "[longctx] precision: " in out.stderr and "-> fp32" in out.stderr
