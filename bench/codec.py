"""Soft-label codec benchmark on real soft labels.

    python -m bench.codec [--dataset digits|mnist-5k|fashion-mnist] [--rows 1000]
    python -m bench.codec --epochs 1     # a weak model's near-uniform labels

A CNN is trained on the non-public part of the data set; its predictions on ``rows`` public
examples are the soft labels (``--epochs 1``: a barely trained CNN, test accuracy about 0.2
on digits, whose rows are near uniform). The delta case is what SCARLET's cache sees: the
predictions after one more epoch, coded against the earlier predictions as both sides hold
them (the earlier labels passed through the same codec, ``roundtrip``).

Columns: bytes per soft-label row (whole msgpack map / N), compression against f32,
bytes / H where H is the order-0 empirical entropy of the symbols the codec encodes, each
stream with its own histogram: float bit patterns; for quant, the argmax columns (without
delta) and the N (C - 1) codes or deltas q - q_ref left after dropping each row's redundant
entry (the same H for ``+zstd``, ``+ans`` and no entropy stage; below 1 means the codec
exploits more than one histogram per stream, e.g. per-class models), max and mean
|decoded - input|, top-1 agreement with the input, and encode / decode throughput in MB/s
of float32 input.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import msgpack
import numpy as np
import torch

from shared.arrays import LabelArray
from shared.data import load_dataset
from shared.distill.training import evaluate, predict, train_supervised
from shared.models import build_model
from shared.protocol.softlabels import (
    CodecSpec,
    decode_soft_labels,
    encode_soft_labels,
    quantize_simplex,
    roundtrip,
)

SETTINGS = [
    f"{base}{delta}{entropy}"
    for delta, bases in (
        ("", ("f32", "f16", "q8", "q6", "q4", "q2")),
        ("+delta", ("q8", "q6", "q4", "q2")),
    )
    for base in bases
    for entropy in ("", "+zstd") + (("+ans",) if base.startswith("q") else ())
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", default="digits", choices=["digits", "mnist-5k", "fashion-mnist"]
    )
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=20, help="epochs before the first prediction")
    parser.add_argument("--private", type=int, default=4000, help="training examples (at most)")
    parser.add_argument("--specs", nargs="*", default=SETTINGS, help="codec specs to measure")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    before, after, accuracy = soft_labels(args.dataset, args.rows, args.epochs, args.private)
    print(
        f"{args.dataset}: {len(after)} x {after.shape[1]} soft labels, CNN test accuracy "
        f"{accuracy:.3f}, mean max-probability {after.max(axis=1).mean():.3f}, "
        f"mean |after - before| {np.abs(after - before).mean():.4f}"
    )
    print(
        f"{'codec':<16}{'layout':>7}{'B/row':>8}{'x f32':>8}{'B/H':>7}{'max err':>10}"
        f"{'mean err':>10}{'top1':>7}{'enc MB/s':>10}{'dec MB/s':>10}"
    )
    for text in args.specs:
        print(measure(CodecSpec.parse(text), before, after))


def soft_labels(
    dataset: str, rows: int, epochs: int, private: int
) -> tuple[LabelArray, LabelArray, float]:
    """(before, after, test accuracy): predictions on ``rows`` public examples."""
    train, test = load_dataset(dataset)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(train), generator=generator)
    if rows >= len(train):
        raise SystemExit(f"--rows must be below {len(train)} for {dataset}")
    public, own = order[:rows], order[rows : rows + private]
    model = build_model("cnn", train.input_shape, train.num_classes, seed=0)
    images, labels = train.images[own], train.labels[own]

    def fit(count: int) -> LabelArray:
        train_supervised(
            model, images, labels, epochs=count, batch_size=32, lr=0.05, generator=generator
        )
        probs: LabelArray = predict(model, train.images[public]).numpy()
        return probs

    before, after = fit(epochs), fit(1)
    return before, after, evaluate(model, test.images, test.labels)


def measure(spec: CodecSpec, before: LabelArray, after: LabelArray) -> str:
    """One table row for ``spec``."""
    reference = roundtrip(before, spec) if spec.delta else None
    n, c = after.shape
    payload = encode_soft_labels(after, spec, reference)
    wire = len(msgpack.packb(payload))
    decoded = decode_soft_labels(
        msgpack.unpackb(msgpack.packb(payload)), reference=reference, max_rows=n, num_classes=c
    )
    error = np.abs(decoded - after)
    entropy_bytes = sum(entropy_bits(stream) for stream in symbols(spec, after, reference)) / 8
    mb = after.size * 4 / 1e6
    encode_s = best_time(lambda: encode_soft_labels(after, spec, reference))
    decode_s = best_time(
        lambda: decode_soft_labels(payload, reference=reference, max_rows=n, num_classes=c)
    )
    top1 = float((decoded.argmax(axis=1) == after.argmax(axis=1)).mean())
    return (
        f"{str(spec):<16}{str(payload['layout']):>7}{wire / n:>8.2f}{n * c * 4 / wire:>8.1f}"
        f"{wire / entropy_bytes if entropy_bytes else float('inf'):>7.2f}"
        f"{error.max():>10.2e}{error.mean():>10.2e}{top1:>7.3f}"
        f"{mb / encode_s:>10.1f}{mb / decode_s:>10.1f}"
    )


def symbols(spec: CodecSpec, probs: LabelArray, reference: LabelArray | None) -> list[np.ndarray]:
    """The symbol streams the codec encodes (see the module docstring)."""
    if spec.kind == "f32":
        return [probs.view(np.uint32)]
    if spec.kind == "f16":
        return [probs.astype(np.float16).view(np.uint16)]
    codes = quantize_simplex(probs, spec.bits)
    if reference is None:  # the argmax entry is dropped and its column sent
        dropped = codes.argmax(axis=1)
        return [dropped, _without(codes, dropped)]
    base = quantize_simplex(reference, spec.bits)  # the reference's argmax entry is dropped
    return [_without(codes - base, base.argmax(axis=1))]


def _without(matrix: np.ndarray, columns: np.ndarray) -> np.ndarray:
    keep = np.ones(matrix.shape, dtype=bool)
    keep[np.arange(len(matrix)), columns] = False
    return matrix[keep]


def entropy_bits(values: np.ndarray) -> float:
    """Order-0 empirical entropy of all entries, in bits (count times H per symbol)."""
    _, counts = np.unique(values, return_counts=True)
    share = counts / counts.sum()
    return float(-(counts * np.log2(share)).sum())


def best_time(call: Callable[[], object], repeats: int = 20) -> float:
    """Best of ``repeats`` wall-clock timings, in seconds (the least disturbed run)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


if __name__ == "__main__":
    main()
