"""Training-step time of the energy model (DSM + TSM) vs the score-only model (DSM).

One run, side by side at the same size: ms per training step (forward + loss + backward
+ Adam step) of each energy-gradient variant and of the score model, their ratio;
evaluation images/s of the one-shot energy (torch.inference_mode) vs a bare forward of
the network; memory (peak RSS on CPU, per-phase peak allocation on CUDA) and the bytes
the autograd graph saves per step. Steps of the variants are interleaved so that load
from other processes hits them alike; the median step is reported.

    .venv/bin/python bench/step_time.py                   # 16x16, widths 16,32,64/128, batch 64, 1 thread
    .venv/bin/python bench/step_time.py --device cuda --size 64 --widths 64,128,256 --mid 512 --batch 128
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dsm.nets import EnergyModel, ScoreModel, build_network  # noqa: E402
from dsm.objectives import (  # noqa: E402
    denoising_score_matching_loss,
    dual_score_matching_loss,
    sample_noise_levels,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=16, help="image size H = W")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--widths", default="16,32,64", help="comma-separated widths per scale")
    p.add_argument("--mid", type=int, default=128, help="middle-block width")
    p.add_argument("--activation", default="gelu")
    p.add_argument("--embedding", default="linear")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--eval-batches", type=int, default=10)
    p.add_argument("--variants", default="autograd/autograd,autograd/fused,embedding/fused",
                   help="energy variants grad_mode/impl (impl = model.impl) to time (comma-separated); "
                        "autograd/autograd is the straightforward double back-propagation")
    p.add_argument("--score-variants", default="autograd,fused",
                   help="score-model impl variants (comma-separated)")
    p.add_argument("--t-min", type=float, default=1e-9)
    p.add_argument("--t-max", type=float, default=1e3)
    p.add_argument("--no-flush-denormal", dest="flush_denormal", action="store_false",
                   help="keep subnormal floats (slow on CPUs, docs/defaults.md#subnormal-floats)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SavedBytes:
    """Bytes of tensors the autograd graph saves during a step (activation memory)."""

    def __init__(self):
        self.total = 0

    def pack(self, x):
        self.total += x.numel() * x.element_size()
        return x

    def __call__(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda x: x)


def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    torch.set_num_threads(args.threads)
    if args.flush_denormal:
        torch.set_flush_denormal(True)
    widths = [int(w) for w in args.widths.split(",")]
    cfg = {"widths": widths, "mid_width": args.mid, "activation": args.activation, "embedding": args.embedding}

    def make_net(impl):
        torch.manual_seed(args.seed)  # same initial weights for every variant
        return build_network({**cfg, "impl": impl}, args.channels, args.size).to(device)

    variants = {}
    for spec in args.variants.split(","):
        mode, impl = spec.split("/")
        variants[f"energy {mode}/{impl}"] = (EnergyModel(make_net(impl), grad_mode=mode), dual_score_matching_loss)
    for impl in args.score_variants.split(","):
        variants[f"score {impl}"] = (ScoreModel(make_net(impl)), denoising_score_matching_loss)
    opts = {k: torch.optim.Adam(m.parameters(), lr=5e-4) for k, (m, _) in variants.items()}
    n_params = sum(p.numel() for p in next(iter(variants.values()))[0].parameters())
    # On CPU the step is also timed in CPU time of this process, which other processes
    # sharing the cores do not inflate (they do inflate wall time); the ratio uses it.
    cpu_clock = time.thread_time if args.threads == 1 else time.process_time

    g = torch.Generator().manual_seed(args.seed)
    shape = (args.batch, args.channels, args.size, args.size)

    def draw():
        x = torch.rand(shape, generator=g).to(device)
        z = torch.randn(shape, generator=g).to(device)
        t = sample_noise_levels(args.batch, args.t_min, args.t_max, generator=g, device=device)
        return x, t, z

    times = {k: [] for k in variants}
    cpu_times = {k: [] for k in variants}
    losses = {k: None for k in variants}
    first_losses = {}
    saved = {}
    peak_cuda = {}
    for step in range(args.warmup + args.steps):
        x, t, z = draw()
        for name, (model, loss_fn) in variants.items():
            opt = opts[name]
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            counter = SavedBytes()
            sync(device)
            t0, c0 = time.perf_counter(), cpu_clock()
            with counter():
                terms = loss_fn(model, x, t, z)
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            opt.step()
            sync(device)
            dt, dc = time.perf_counter() - t0, cpu_clock() - c0
            if step >= args.warmup:
                times[name].append(dt)
                cpu_times[name].append(dc)
            losses[name] = terms["loss"].item()
            if step == 0:
                first_losses[name] = losses[name]
            saved[name] = counter.total
            if device.type == "cuda":
                peak_cuda[name] = torch.cuda.max_memory_allocated(device)

    # Evaluation throughput: one-shot energy vs a bare network forward, no gradient.
    # (with the default impl when timed: the reference's torch.var_mean is slow on CPU)
    energies = [k for k in variants if k.startswith("energy")]
    eval_name = next((k for k in energies if k.endswith("/fused")), energies[0])
    model = variants[eval_name][0]
    x, t, _ = draw()
    evals = {}
    for name, fn in (("energy (one-shot)", lambda: model.energy(x, t)), ("bare forward", lambda: model.net(x, t))):
        with torch.inference_mode():
            fn()
            sync(device)
            t0, c0 = time.perf_counter(), cpu_clock()
            for _ in range(args.eval_batches):
                fn()
            sync(device)
        n = args.eval_batches * args.batch
        evals[name] = (n / (time.perf_counter() - t0), n / (cpu_clock() - c0))

    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or platform.machine()}), "
          f"threads {torch.get_num_threads()}, torch {torch.__version__}, flush_denormal {args.flush_denormal}")
    print(f"model: {args.size}x{args.size}x{args.channels}, widths {widths}, mid {args.mid}, {args.activation}, "
          f"embedding {args.embedding}, {n_params:,} params; batch {args.batch}; t in [{args.t_min:g}, {args.t_max:g}]")
    print(f"training step, median of {args.steps} (interleaved, after {args.warmup} warm-up); "
          f"ratios to each score variant:")
    use_cpu = device.type == "cpu"
    ref = cpu_times if use_cpu else times
    med = {k: 1e3 * statistics.median(v) for k, v in ref.items()}
    scores = [k for k in variants if k.startswith("score")]
    for name in variants:
        wall = 1e3 * statistics.median(times[name])
        ratios = " ".join(f"x{med[name] / med[k]:.2f}" for k in scores)
        clock = f"cpu {med[name]:7.1f} ms  wall {wall:7.1f} ms" if use_cpu else f"{wall:7.1f} ms"
        mem = f", peak alloc {peak_cuda[name] / 2**20:.1f} MiB" if name in peak_cuda else ""
        print(f"  {name:26s} {clock}  ratio {ratios:12s} graph saves {saved[name] / 2**20:6.1f} MiB{mem}"
              f"  last loss {losses[name]:.4f}")
    print(f"  (ratios against: {', '.join(scores)}; {'CPU time' if use_cpu else 'wall time'})")
    for name in variants:  # headline: each energy variant against the score model of the same impl
        impl = name.split("/")[-1]
        if name.startswith("energy") and f"score {impl}" in med:
            print(f"ratio {name} / score {impl}: {med[name] / med[f'score {impl}']:.2f}")
    energy_first = [v for k, v in first_losses.items() if k.startswith("energy")]
    spread = (max(energy_first) - min(energy_first)) / abs(energy_first[0])
    print(f"first-step loss of the energy variants: {energy_first[0]:.6f}, relative spread {spread:.1e}"
          f"{'' if spread < 1e-4 else '  <-- VARIANTS DISAGREE'}")
    for name, (ips, ips_cpu) in evals.items():
        cpu = f" ({ips_cpu:.0f} per CPU-second)" if use_cpu else ""
        print(f"evaluation {name:18s} {ips:10.0f} images/s{cpu}  [{eval_name}]")
    if device.type == "cpu":
        print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
