"""What only a GPU shows: no host-device sync per step, and gradprobe's overhead on a GPT-2-small-sized model.

    python benchmarks/gpu_check.py [--parts sync,launcher,overhead,fsdp] [--json PATH]
    python benchmarks/gpu_check.py --device cpu --quick      # exercises every code path on a CPU

One prepared script, under 8 minutes on one H100/H200:

* ``sync``: every clip policy (and no policy), in fp32, fp16 autocast with a
  ``GradScaler`` and bf16 autocast, trains a small transformer with a fused
  AdamW under ``gradprobe.watch`` while ``torch.cuda.set_sync_debug_mode("warn")``
  reports every synchronising CUDA call; the same loop without gradprobe is
  counted alike. gradprobe must add no sync per step (its flush, one copy every
  ``flush_every`` steps, is outside the counted steps).
* ``launcher``: the same count inside ``gradprobe profile`` and ``gradprobe run
  --clip`` (the unmodified-script path: post-import hooks, launcher).
* ``overhead``: a GPT-2-small-sized model (124M parameters, 12 layers, bf16
  autocast, fused AdamW) in interleaved rounds of baseline, ``clip_grad_norm_``,
  the per-parameter ``.item()`` logger, gradprobe at default sampling, every
  step, and default sampling with ``global-norm`` clipping; CUDA-event step
  times, medians over rounds of the ratio to the same round's baseline, with
  the interquartile range. Goals: <= 1.01x default, <= 1.03x every step.
* ``fsdp``: the same model sharded with FSDP2 (``fully_shard``) on one GPU:
  overhead of recording and clipping, and the recorded global norm against the
  norm of the full gradients.

Writes a JSON report (default ``$OUT/gpu_check.json`` when ``OUT`` is set,
else ``benchmarks/results/gpu_check.json``) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

import gradprobe
from gradprobe.recording.session import MAX_FLUSH_EVERY

POLICIES = ("global-norm:max=1", "global-norm:max=1,norm=inf", "layer-norm:max=0.5", "value:max=0.01",
            "scaled-value:c=1", "sign:max=0.5", "autoclip:p=10", "zclip:z=2.5", "agc:lambda=0.05",
            "skip:sigma=6,window=16", "zclip:z=2.5+skip:sigma=6,window=16")
PRECISIONS = ("fp32", "fp16-gradscaler", "bf16")
NEVER_FLUSH = {"flush_every": MAX_FLUSH_EVERY, "flush_seconds": 1e9}  # far more steps than any part times


# -- the models --------------------------------------------------------------------------------


class Block(nn.Module):
    """A pre-norm GPT block: causal self-attention and a 4x MLP."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc, self.out = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attention = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attention.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """A GPT-2-style language model with a tied output head."""

    def __init__(self, vocab: int, context: int, dim: int, layers: int, heads: int):
        super().__init__()
        self.embed, self.position = nn.Embedding(vocab, dim), nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.position(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.norm(x) @ self.embed.weight.T


@dataclass(frozen=True)
class Size:
    """Model and batch dimensions."""

    vocab: int
    context: int
    dim: int
    layers: int
    heads: int
    batch: int


GPT2_SMALL = Size(vocab=50304, context=1024, dim=768, layers=12, heads=12, batch=16)
SMALL = Size(vocab=512, context=64, dim=128, layers=2, heads=4, batch=8)
TINY = Size(vocab=64, context=16, dim=32, layers=2, heads=2, batch=4)


@dataclass
class Trainer:
    """A model, a fused AdamW and one fixed batch, stepped in a chosen precision."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    tokens: torch.Tensor
    device: torch.device
    precision: str
    scaler: torch.amp.GradScaler | None

    def loss(self) -> torch.Tensor:
        dtype = {"fp16-gradscaler": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        autocast = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else nullcontext()
        with autocast:
            logits = self.model(self.tokens[:, :-1])
            return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), self.tokens[:, 1:].reshape(-1))

    def step(self, hook: Callable[["Trainer"], None] | None = None) -> None:
        """One training step; ``hook`` runs between backward and the update, on unscaled gradients."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if hook is not None:
                self.scaler.unscale_(self.optimizer)
                hook(self)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return
        loss.backward()
        if hook is not None:
            hook(self)
        self.optimizer.step()


def make_trainer(size: Size, device: torch.device, precision: str = "bf16", seed: int = 0,
                 shard: bool = False) -> Trainer:
    """A fresh model of ``size`` on ``device`` (FSDP2-sharded with ``shard``), fused AdamW."""
    torch.manual_seed(seed)
    model = GPT(size.vocab, size.context, size.dim, size.layers, size.heads).to(device)
    if shard:
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=not shard)
    tokens = torch.randint(0, size.vocab, (size.batch, size.context + 1), device=device)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16-gradscaler" else None
    return Trainer(model, optimizer, tokens, device, precision, scaler)


# -- sync counting -----------------------------------------------------------------------------


@contextmanager
def counted_syncs(device: torch.device) -> Iterator[list[str]]:
    """The synchronising CUDA calls made inside the block (empty, and not counted, on a CPU)."""
    found: list[str] = []
    if device.type != "cuda":
        yield found
        return
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode(0)
    found.extend(str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower())


def syncs_per_step(trainer: Trainer, steps: int) -> tuple[float, list[str]]:
    """Synchronising calls per training step (two warm-up steps first) and the distinct messages."""
    for _ in range(2):
        trainer.step()
    with counted_syncs(trainer.device) as found:
        for _ in range(steps):
            trainer.step()
    return len(found) / steps, sorted(set(found))


def check_syncs(device: torch.device, size: Size, steps: int, out: str) -> list[dict]:
    """Syncs per step without gradprobe and with it, for every policy and precision."""
    rows = []
    for precision in PRECISIONS:
        baseline, _ = syncs_per_step(make_trainer(size, device, precision), steps)
        for spec in (None, *POLICIES):
            trainer = make_trainer(size, device, precision)
            with gradprobe.watch(trainer.model, out=out, every=1, clip=spec, **NEVER_FLUSH):
                count, messages = syncs_per_step(trainer, steps)
            rows.append({"precision": precision, "policy": spec or "none (recording only)",
                         "baseline_syncs_per_step": baseline, "syncs_per_step": count,
                         "added": count - baseline, "messages": messages})
            print(f"  sync {precision:16s} {spec or 'none':40s} +{count - baseline:g}/step", file=sys.stderr)
    return rows


def child_syncs(size_name: str, device: str, steps: int) -> None:
    """Run under ``gradprobe profile``/``run`` (or plain python): print this process's syncs per step."""
    trainer = make_trainer(SIZES[size_name], torch.device(device), "bf16")
    count, messages = syncs_per_step(trainer, steps)
    print(json.dumps({"syncs_per_step": count, "messages": messages}))


def check_launcher(device: torch.device, size_name: str, steps: int, out: str) -> list[dict]:
    """The sync count of this script's own loop under plain python, ``gradprobe profile`` and
    ``gradprobe run --clip``."""
    child = [__file__, "--", "--child-syncs", size_name, "--device", str(device), "--steps", str(steps)]
    flush = ["--flush-every", str(NEVER_FLUSH["flush_every"]), "--every", "1", "--out", out, "--quiet"]
    commands = {
        "python": [sys.executable, __file__, *child[2:]],
        "gradprobe profile": [sys.executable, "-m", "gradprobe", "profile", *flush, *child],
        "gradprobe run --clip zclip+skip": [sys.executable, "-m", "gradprobe", "run", "--clip",
                                            "zclip:z=2.5+skip:sigma=6,window=16", *flush, *child],
    }
    rows = []
    for label, command in commands.items():
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        result = json.loads(lines[-1]) if done.returncode == 0 and lines else {"error": done.stderr[-2000:]}
        rows.append({"command": label, **result})
        print(f"  launcher {label}: {result.get('syncs_per_step', 'failed')}", file=sys.stderr)
    return rows


# -- overhead ----------------------------------------------------------------------------------


def _clip_grad_norm(trainer: Trainer) -> None:
    torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), 1.0)


def _per_parameter_logger(trainer: Trainer) -> None:
    [p.grad.norm().item() for p in trainer.model.parameters() if p.grad is not None]


def _watch(every: int | None = None, clip: str | None = None):
    def context(trainer: Trainer, out: str):
        return gradprobe.watch(trainer.model, out=out, clip=clip, **({"every": every} if every else {}))

    return context


VARIANTS: dict[str, tuple[Callable | None, Callable | None]] = {
    "baseline": (None, None),
    "clip_grad_norm_": (None, _clip_grad_norm),
    "per-parameter logger (.item())": (None, _per_parameter_logger),
    "gradprobe default sampling": (_watch(), None),
    "gradprobe every step": (_watch(every=1), None),
    "gradprobe default + global-norm clip": (_watch(clip="global-norm:max=1"), None),
}


def step_ms(trainer: Trainer, hook: Callable | None, steps: int) -> float:
    """Median milliseconds per step, from CUDA events (wall clock on a CPU)."""
    times = []
    for _ in range(steps):
        if trainer.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            trainer.step(hook)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            trainer.step(hook)
            times.append(1e3 * (time.perf_counter() - begin))
    return statistics.median(times)


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def overhead(trainer: Trainer, rounds: int, steps: int, out: str, variants: dict = VARIANTS) -> dict:
    """Interleaved rounds of every variant on one trainer; ratios to the same round's baseline."""
    for _ in range(3):
        trainer.step()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        names = list(variants)
        for name in names[r % len(names):] + names[: r % len(names)]:
            context, hook = variants[name]
            with ExitStack() as stack:
                if context is not None:
                    stack.enter_context(context(trainer, out))
                times[name].append(step_ms(trainer, hook, steps))
        print(f"  overhead: round {r + 1}/{rounds}", file=sys.stderr)
    parameters = sum(p.numel() for p in trainer.model.parameters())
    result = {"parameters": parameters, "tensors": len(list(trainer.model.parameters())), "variants": {}}
    for name, values in times.items():
        q1, median, q3 = _quartiles([t / b for t, b in zip(values, times["baseline"])])
        result["variants"][name] = {"ms_per_step": statistics.median(values), "ratio": median, "ratio_q1": q1,
                                    "ratio_q3": q3, "ms": values}
    return result


# -- FSDP2 on one GPU --------------------------------------------------------------------------


def check_fsdp(device: torch.device, size: Size, rounds: int, steps: int, out: str) -> dict:
    """Overhead of recording and clipping an FSDP2-sharded model, and the recorded norm's accuracy."""
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    try:
        trainer = make_trainer(size, device, "bf16", shard=True)
        variants = {name: VARIANTS[name] for name in ("baseline", "gradprobe default sampling",
                                                      "gradprobe default + global-norm clip")}
        result = overhead(trainer, rounds, steps, out, variants)
        with gradprobe.watch(trainer.model, out=out, every=1) as recording:
            trainer.step()
            grads = [p.grad.full_tensor() for p in trainer.model.parameters() if p.grad is not None]
            expected = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float())
                                                                    for g in grads])))
        recorded = float(gradprobe.load_run(recording.path).steps["global_norm"].iloc[-1])
        result["global_norm"] = {"recorded": recorded, "full_gradients": expected,
                                 "relative_error": abs(recorded - expected) / expected}
        return result
    finally:
        dist.destroy_process_group()


# -- report ------------------------------------------------------------------------------------


def print_tables(report: dict) -> None:
    """Markdown tables of every part that ran."""
    if "sync" in report:
        print("\n| precision | policy | syncs/step without gradprobe | with | added |\n|---|---|---|---|---|")
        for row in report["sync"]:
            print(f"| {row['precision']} | `{row['policy']}` | {row['baseline_syncs_per_step']:g} | "
                  f"{row['syncs_per_step']:g} | {row['added']:+g} |")
    if "launcher" in report:
        print("\n| command | syncs/step |\n|---|---|")
        for row in report["launcher"]:
            print(f"| {row['command']} | {row.get('syncs_per_step', 'failed')} |")
    for part in ("overhead", "fsdp"):
        if part in report:
            r = report[part]
            print(f"\n{part}: {r['parameters'] / 1e6:.1f}M parameters, {r['tensors']} tensors\n"
                  "| variant | ms/step | ratio [IQR] |\n|---|---|---|")
            for name, v in r["variants"].items():
                print(f"| {name} | {v['ms_per_step']:.2f} | {v['ratio']:.4f}x [{v['ratio_q1']:.4f}-"
                      f"{v['ratio_q3']:.4f}] |")
            if "global_norm" in r:
                g = r["global_norm"]
                print(f"recorded global norm {g['recorded']:.6g} vs full gradients {g['full_gradients']:.6g} "
                      f"(relative error {g['relative_error']:.2e})")


SIZES = {"gpt2-small": GPT2_SMALL, "small": SMALL, "tiny": TINY}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="sync,launcher,overhead,fsdp")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny models and few steps (a smoke test)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant per round")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child-syncs", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_syncs:
        child_syncs(args.child_syncs, args.device, args.steps)
        return
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device; use --device cpu --quick to exercise the code paths")
    small, big = ("tiny", "tiny") if args.quick else ("small", "gpt2-small")
    rounds, steps = (2, 2) if args.quick else (args.rounds, args.steps)
    parts = args.parts.split(",")
    report: dict = {"meta": {"torch": torch.__version__, "device": torch.cuda.get_device_name() if
                             device.type == "cuda" else "cpu", "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                             "quick": args.quick}}
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as out:
        if "sync" in parts:
            report["sync"] = check_syncs(device, SIZES[small], 2 if args.quick else 6, out)
        if "launcher" in parts:
            report["launcher"] = check_launcher(device, small, 2 if args.quick else 6, out)
        if "overhead" in parts:
            report["overhead"] = overhead(make_trainer(SIZES[big], device), rounds, steps, out)
        if "fsdp" in parts:
            report["fsdp"] = check_fsdp(device, SIZES[big], rounds, steps, out)
    report["meta"]["seconds"] = time.monotonic() - started
    print_tables(report)
    target = args.json or (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT")
                           else Path(__file__).parent / "results" / "gpu_check.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2, default=lambda v: None if isinstance(v, float)
                                 and not math.isfinite(v) else str(v)))
    print(f"wrote {target} ({report['meta']['seconds']:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
