#!/usr/bin/python3
"""PyTorch peer of one attnbench training step, for side-by-side throughput figures.

The model mirrors attnbench's encoder with the softmax variant: token embedding + learned
positions, pre-norm blocks (LN -> MHA without biases -> residual; LN -> Linear-GELU-Linear ->
residual, dropout after each), final LN, masked mean pooling, Linear-ReLU-Linear head, AdamW.
Inputs are random tokens (no padding), labels random: only the step time matters.

Run with Debian's interpreter and OpenBLAS's OpenMP build (the default BLAS of Debian's torch is
the reference one, 30-50x slower):
  LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp /usr/bin/python3 \
      scripts/peers/torch_train_step.py --batch 32 --length 1024 --heads 4 --threads 2
Prints one JSON line with the median step time and tokens/s.
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, heads, mlp, dropout):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=0.0, bias=False, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, mlp), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.drop(self.attn(h, h, h, need_weights=False)[0])
        return x + self.drop(self.mlp(self.ln2(x)))


class Encoder(nn.Module):
    def __init__(self, vocab, length, d, heads, mlp, layers, classes, dropout):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(length, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, heads, mlp, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Sequential(nn.Linear(d, mlp), nn.ReLU(), nn.Linear(mlp, classes))
        self.drop = nn.Dropout(dropout)

    def forward(self, tokens):
        x = self.drop(self.tok(tokens) + self.pos)
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x).mean(dim=1))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--mlp", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps after 2 warm-up steps")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = Encoder(16, a.length, a.d_model, a.heads, a.mlp, a.layers, 10, 0.1).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.01)
    x = torch.randint(1, 16, (a.batch, a.length))
    y = torch.randint(0, 10, (a.batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(2):
        step()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    print(json.dumps({"peer": "pytorch", "torch": torch.__version__, "batch": a.batch, "length": a.length,
                      "heads": a.heads, "threads": a.threads, "step_seconds_median": round(med, 4),
                      "step_seconds_min": round(times[0], 4), "step_seconds_max": round(times[-1], 4),
                      "tokens_per_second_median_step": round(a.batch * a.length / med, 1)}))


if __name__ == "__main__":
    main()
