"""Training speed of jaxseed's CNN in PyTorch eager mode, alone in its own process.

    python benchmarks/torch_cnn.py --arrays FILE.npz --steps 200 --batch-size 128 \\
        --learning-rate 3e-3 --weight-decay 1e-4 --dropout-rate 0.5

``throughput.py`` runs it once per round, as a plain PyTorch script is run: a process that
imports neither JAX nor jaxseed, so no other runtime's threads or memory share the cores
with it. FILE.npz holds ``images`` (uint8, N x 28 x 28 x 1) and ``labels`` (integers), the
training set ``throughput.py`` loaded. Prints one JSON line: images per second and seconds
of the ``--steps`` timed steps, after ``--warmup-steps`` untimed ones.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn


def cnn(dropout_rate: float) -> nn.Module:
    """jaxseed's CNN: conv3x3(32)-relu-maxpool2-conv3x3(64)-relu-maxpool2-dense(256)-relu-dropout-dense(10),
    in NCHW, PyTorch's native layout. Its own seeding is irrelevant: only its speed is measured."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(7 * 7 * 64, 256), nn.ReLU(), nn.Dropout(dropout_rate), nn.Linear(256, 10))


def train_steps(model, optimizer, images: torch.Tensor, labels: torch.Tensor, batch: int, first: int, steps: int):
    """``steps`` AdamW steps on consecutive slices of the host tensors (no augmentation)."""
    for i in range(first, first + steps):
        start = (i * batch) % (len(labels) - batch)
        loss = nn.functional.cross_entropy(model(images[start:start + batch]), labels[start:start + batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arrays", required=True, help=".npz with the training `images` and `labels`")
    parser.add_argument("--steps", type=int, required=True, help="timed training steps")
    parser.add_argument("--warmup-steps", type=int, default=10, help="untimed steps first (allocator, kernels)")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--learning-rate", type=float, required=True)
    parser.add_argument("--weight-decay", type=float, required=True)
    parser.add_argument("--dropout-rate", type=float, required=True)
    args = parser.parse_args(argv)
    # torch.set_num_threads is left at PyTorch's default (one thread per physical core), as a
    # plain PyTorch script gets it; the thread count is printed with the figures.
    with np.load(args.arrays) as arrays:
        images = torch.from_numpy(arrays["images"].astype(np.float32).transpose(0, 3, 1, 2) / 255.0)
        labels = torch.from_numpy(arrays["labels"].astype(np.int64))
    model = cnn(args.dropout_rate)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    train_steps(model, optimizer, images, labels, args.batch_size, 0, args.warmup_steps)
    start = time.perf_counter()
    train_steps(model, optimizer, images, labels, args.batch_size, args.warmup_steps, args.steps)
    seconds = time.perf_counter() - start
    print(json.dumps({"images_per_second": args.steps * args.batch_size / seconds, "seconds": seconds,
                      "steps": args.steps, "threads": torch.get_num_threads(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
