"""The precision policy: one decision, from what the hardware really does, used by every verb.

`auto` resolves to:
- CUDA: bf16 where the GPU supports it, else fp16 (fp32 for models that overflow in fp16, e.g. T5);
- CPU: bf16 only where the CPU computes bf16 natively (AVX512-BF16 or AMX, and torch/oneDNN allowed to use
  it), confirmed by a ~10 ms matmul probe; fp32 everywhere else.

Why not "bf16 on every CPU": on a CPU without bf16 instructions (AVX2-only, e.g. many AMD EPYC) bf16 is
emulated and a training step was measured 10-20x slower than fp32 (demo step 78 s vs 3.5 s). The chip model
changes between machines of the same kind, so the decision is made on the machine at hand, never by device
type alone. The decision and its reason are logged once per process and recorded in run.json.
"""
from __future__ import annotations

import functools
import os
import time
from dataclasses import asdict, dataclass

from longctx.common import LongctxError, log

CHOICES = ("auto", "fp32", "fp16", "bf16")
_announced: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Precision:
    """A resolved precision: what runs, on which device, and why."""

    name: str  # "fp32" | "bf16" | "fp16"
    device: str  # "cpu" | "cuda"
    reason: str

    def trainer_flags(self) -> dict[str, bool]:
        """The TrainingArguments flags for this precision (bf16/fp16 autocast, use_cpu)."""
        return {"bf16": self.name == "bf16", "fp16": self.name == "fp16", "use_cpu": self.device == "cpu"}

    def autocast_dtype(self):
        """torch dtype for autocast, or None for fp32."""
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def record(self) -> dict[str, str]:
        return asdict(self)


def _isa_capped() -> str | None:
    """A user/oneDNN cap below bf16 instructions (ONEDNN_MAX_CPU_ISA=AVX2 and the like), if any."""
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = os.environ.get(var, "").strip().upper()
        if value and value != "ALL" and "BF16" not in value and "AMX" not in value:
            return f"{var}={value}"
    return None


def _probe_bf16_speedup() -> float:
    """fp32 matmul time / bf16 matmul time on this CPU (>1: bf16 is faster). About 20 ms where bf16 is native.

    The best of three interleaved rounds per dtype, so a burst of other load on a shared machine does not
    decide it (emulated bf16 is 10-100x slower, native 2-3x faster: the ratio is far from 1 either way)."""
    import torch

    a = torch.randn(256, 256)
    inputs = {dtype: a.to(dtype) for dtype in (torch.float32, torch.bfloat16)}
    best = {dtype: float("inf") for dtype in inputs}
    for x in inputs.values():
        x @ x  # warm-up (oneDNN picks its kernel on first use)
    for _ in range(3):
        for dtype, x in inputs.items():
            start = time.perf_counter()
            for _ in range(4):
                x @ x
            best[dtype] = min(best[dtype], time.perf_counter() - start)
    return best[torch.float32] / max(best[torch.bfloat16], 1e-9)


@functools.lru_cache(maxsize=1)
def cpu_bf16() -> tuple[bool, str]:
    """(native, why): does this CPU compute bf16 natively, as torch runs here?

    Flags alone are not enough: ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA can keep torch off the bf16
    instructions, and an unknown CPU may report them without being faster; the probe settles it."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    caps = torch.cpu.get_capabilities()
    isa = [name for name in ("avx512_bf16", "amx_bf16") if caps.get(name)]
    if not isa:
        return False, f"cpu {capability} without native bf16 (no AVX512-BF16/AMX)"
    if not capability.startswith("AVX512") and "AMX" not in capability:
        return False, f"cpu has {'+'.join(isa)} but torch runs its {capability} kernels (ATEN_CPU_CAPABILITY)"
    capped = _isa_capped()
    if capped:
        return False, f"cpu has {'+'.join(isa)} but oneDNN is capped ({capped})"
    speedup = _probe_bf16_speedup()
    if speedup < 1.0:
        return False, f"cpu {capability} with {'+'.join(isa)}, but bf16 matmul measured {1 / speedup:.1f}x slower"
    return True, f"cpu {capability} with native bf16 ({'+'.join(isa)}; bf16 matmul {speedup:.1f}x fp32)"


def resolve_precision(requested: str = "auto", *, fp16_ok: bool = True) -> Precision:
    """Resolve auto|fp32|fp16|bf16 for the device at hand; log the choice and its reason once per process.

    `fp16_ok=False` (T5): auto never picks fp16, and an explicit fp16 warns that activations overflow."""
    import torch

    if requested not in CHOICES:
        raise LongctxError(f"precision must be one of {', '.join(CHOICES)}, got {requested!r}")
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if cuda:
        bf16 = torch.cuda.is_bf16_supported()
        gpu = torch.cuda.get_device_name()
        if requested == "auto":
            name = "bf16" if bf16 else ("fp16" if fp16_ok else "fp32")
            reason = f"cuda {gpu} {'supports' if bf16 else 'lacks'} bf16 -> {name}"
        else:
            if requested == "bf16" and not bf16:
                raise LongctxError(f"precision bf16: this GPU ({gpu}) does not support bfloat16; use fp16 or fp32")
            name, reason = requested, f"asked for {requested} on cuda {gpu}"
    else:
        if requested == "fp16":
            raise LongctxError("precision fp16 needs a CUDA GPU (on CPU transformers silently trains fp32); "
                               "use bf16 or fp32")
        native, why = cpu_bf16() if requested in ("auto", "bf16") else (False, "")
        if requested == "auto":
            name = "bf16" if native else "fp32"
            reason = f"{why} -> {name}"
        else:
            name, reason = requested, f"asked for {requested} on cpu"
            if requested == "bf16" and not native:
                reason += f" ({why}: emulated)"
    if requested == "fp16" and not fp16_ok:
        log.warning("precision fp16: T5 activations often overflow in fp16 (NaN loss); bf16 or fp32 are safer")
    resolved = Precision(name, device, reason)
    if (requested, reason) not in _announced:
        _announced.add((requested, reason))
        if requested == "bf16" and device == "cpu" and "emulated" in reason:
            log.warning("precision bf16: %s; expect it to be 10-20x slower than fp32 (--precision fp32 or auto)",
                        reason.split(" (", 1)[1].rstrip(")"))
        else:
            log.info("precision: %s", reason if requested == "auto" else f"{name} ({reason})")
    return resolved
