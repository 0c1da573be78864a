"""Where an image batch's time goes, before and after each change, side by side.

    .venv/bin/python bench/bench_image_input.py [--images 5000] [--repeats 3]
        [--out bench/results/image_input.md]

Writes a CIFAR-10 subset twice (JPEG as given, and uint8 pixel arrays: `--store
encoded` / `raw`) and times, per image on one core, the median of `--repeats`:
- reading the shard: webdataset's tar reader (tarfile) and gobig's header parser;
- the payload: JPEG decode (PIL) and the pixel array (`parse_pixels`);
- augmentation and normalisation: one image at a time with a generator per image (the
  loader's earlier path, reproduced here) and the batch path (`vit_batch`);
- the whole loader (`build_loader("vit")`, batch 64, augmented, 0 workers) on both, and
  on pixel shards with one DataLoader worker (the batch handed across processes).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from webdataset.tariterators import group_by_keys, tar_file_expander

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from _report import write_report  # noqa: E402  (bench/ is the script's folder)
from _train_runs import load_line, machine_line  # noqa: E402

from data_pipeline import build_loader, load_manifest, write_image_shards  # noqa: E402
from data_pipeline.reader import parse_pixels  # noqa: E402
from data_pipeline.tar_stream import iter_samples  # noqa: E402
from data_pipeline.transforms import IMAGENET_MEAN, IMAGENET_STD, VitSpec, vit_batch  # noqa: E402

CIFAR = ROOT.parent / "shared" / "data" / "cifar10-train.tar"
BATCH = 64


def per_image(images: list[np.ndarray], seed: int = 0) -> np.ndarray:
    """The loader's earlier per-image path: a generator per item, reflect-pad, crop,
    flip, normalise, transpose, then stack."""
    mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
    rows = []
    for index, arr in enumerate(images):
        rng = np.random.default_rng([seed, 0, 4, index])
        h, w = arr.shape[:2]
        pad = max(1, h // 8)
        padded = np.pad(arr, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
        y, x = rng.integers(0, 2 * pad + 1, size=2)
        arr = padded[y : y + h, x : x + w]
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        out = (arr.astype(np.float32) * (1.0 / 255.0) - mean) / std
        rows.append(np.ascontiguousarray(out.transpose(2, 0, 1)))
    return np.stack(rows)


def timed(fn, count: int, repeats: int) -> float:
    """Median microseconds per item of `fn()` handling `count` items."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - start) / count * 1e6)
    return statistics.median(runs)


def read_webdataset(path: str) -> list[dict]:
    with open(path, "rb") as stream:
        files = tar_file_expander([{"url": path, "stream": stream}])
        return list(group_by_keys(files))


def read_gobig(path: str) -> list[dict]:
    with open(path, "rb") as stream:
        return list(iter_samples(stream))


def loader_rate(source: Path, images: int, workers: int = 0) -> float:
    loader = build_loader("vit", str(source), batch_size=BATCH, augment=True, num_workers=workers)
    it = iter(loader)
    next(it)  # first block read and start-up excluded
    start, n = time.perf_counter(), 0
    while n < images:
        n += len(next(it)["labels"])
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/image_input.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    per_class = args.images // 10
    with tempfile.TemporaryDirectory(prefix="gobig-bench-") as tmp:
        shards = {}
        for store in ("encoded", "raw"):
            shards[store] = Path(tmp) / store
            write_image_shards(
                CIFAR, shards[store], max_per_class=per_class, store=store,
                shard_size="1GB", progress=False,
            )  # fmt: skip
        first = {s: str(shards[s] / load_manifest(str(shards[s] / "manifest.json")).shards[0].name)
                 for s in shards}  # fmt: skip
        n = args.images
        jpeg_samples = read_gobig(first["encoded"])
        raw_samples = read_gobig(first["raw"])
        decoded = [parse_pixels(s["pixels.npy"]) for s in raw_samples]
        rows = [(a, 0, 0, i) for i, a in enumerate(decoded)]
        spec = VitSpec(32, True)

        def decode_jpeg() -> None:
            for s in jpeg_samples:
                with Image.open(io.BytesIO(s["jpg"])) as img:
                    np.asarray(img.convert("RGB"))

        def batches(fn) -> None:
            for b in range(0, n - BATCH + 1, BATCH):
                fn(b)

        figures = {
            "read, webdataset (tarfile), JPEG shard": timed(
                lambda: read_webdataset(first["encoded"]), n, args.repeats),
            "read, gobig header parser, JPEG shard": timed(
                lambda: read_gobig(first["encoded"]), n, args.repeats),
            "read, webdataset (tarfile), pixel shard": timed(
                lambda: read_webdataset(first["raw"]), n, args.repeats),
            "read, gobig header parser, pixel shard": timed(
                lambda: read_gobig(first["raw"]), n, args.repeats),
            "payload, JPEG decode (PIL)": timed(decode_jpeg, n, args.repeats),
            "payload, pixel array (parse_pixels)": timed(
                lambda: [parse_pixels(s["pixels.npy"]) for s in raw_samples], n, args.repeats),
            "augment + normalise, per image (earlier path)": timed(
                lambda: batches(lambda b: per_image(decoded[b : b + BATCH])), n, args.repeats),
            "augment + normalise, per batch (vit_batch)": timed(
                lambda: batches(lambda b: vit_batch(rows[b : b + BATCH], spec, 0)), n,
                args.repeats),
            "whole loader, JPEG shards": statistics.median(
                loader_rate(shards["encoded"], n) for _ in range(args.repeats)),
            "whole loader, pixel shards": statistics.median(
                loader_rate(shards["raw"], n) for _ in range(args.repeats)),
            "whole loader, pixel shards, 1 DataLoader worker": statistics.median(
                loader_rate(shards["raw"], n, workers=1) for _ in range(args.repeats)),
        }  # fmt: skip
    lines = [
        "# Image input: where a batch's time goes",
        "",
        f"Machine: {machine_line()}. Load at the end: {load_line()}.",
        f"Command: `.venv/bin/python bench/bench_image_input.py --images {args.images} "
        f"--repeats {args.repeats}` ({args.images} CIFAR-10 images, 32x32, one core, "
        f"median of {args.repeats}).",
        "",
        "| step | us per image | images/s |",
        "| --- | ---: | ---: |",
        *(f"| {name} | {us:.1f} | {1e6 / us:,.0f} |" for name, us in figures.items()),
        "",
        f"Loader, pixel shards / JPEG shards: **"
        f"{figures['whole loader, JPEG shards'] / figures['whole loader, pixel shards']:.1f}x"
        "** faster.",
    ]
    write_report(lines, ROOT / args.out)


if __name__ == "__main__":
    main()
