"""CPU cost of one default-scale training step (dual loss + backward + fused Adam), 1 thread,
for image sizes, batch sizes and grad modes; rounds interleaved so that machine load hits
all alike. Reports median process CPU ms per step and the ratio to the reference
(16x16, batch 16, autograd).

    python bench/recipe/step_cost.py [--steps 15 --rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dsm.nets import build_model  # noqa: E402
from dsm.objectives import dual_score_matching_loss, sample_noise_levels  # noqa: E402

CONFIGS = [(16, 16, "autograd"), (16, 16, "embedding"), (16, 32, "autograd"), (16, 64, "autograd"),
           (12, 16, "autograd"), (12, 32, "autograd"), (8, 16, "autograd"), (8, 32, "autograd"),
           (8, 64, "autograd")]


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    runs = {}
    for size, bs, gm in CONFIGS:
        torch.manual_seed(0)
        m = build_model({"kind": "energy", "widths": [16, 32], "mid_width": 32, "layers_per_block": 2,
                         "embedding": "log", "log_t_floor": 1e-5, "grad_mode": gm}, 1, size)
        opt = torch.optim.Adam(m.parameters(), lr=1e-4, fused=True)
        g = torch.Generator().manual_seed(1)
        x = 0.5 + 0.1 * torch.randn(bs, 1, size, size, generator=g)
        runs[(size, bs, gm)] = (m, opt, x, g, [])
    for _ in range(a.rounds):
        for key, (m, opt, x, g, times) in runs.items():
            for i in range(a.steps + 2):
                t0 = time.process_time()
                t = sample_noise_levels(x.shape[0], 1e-5, 1.0, g)
                z = torch.randn(x.shape, generator=g)
                opt.zero_grad(set_to_none=True)
                dual_score_matching_loss(m, x, t, z)["loss"].backward()
                opt.step()
                if i >= 2:
                    times.append(time.process_time() - t0)
    ref = statistics.median(runs[CONFIGS[0]][4])
    for (size, bs, gm), (*_, times) in runs.items():
        med = statistics.median(times)
        print(f"size {size:2d} batch {bs:2d} {gm:9s}: {1e3 * med:6.1f} ms/step  x{med / ref:4.2f}  "
              f"({1e3 * med / bs:5.2f} ms/image)")


if __name__ == "__main__":
    main()
