"""What naming the live head costs: hashing its files (`draft_version`) against reading the registry
(`head_version`), on a head of production size.

The daemon names the live head at startup, on every head swap and on every device loss, and
`specwatch status` / `report` name it on every call. A production EAGLE-3 head for an 8B target is
about 0.5-1 GB (a 32k draft vocabulary, its own embedding); an MTP layer of a large target, more.

    python bench/head_version.py                 # a 1 GiB head
    python bench/head_version.py --gib 4 --repeat 3

Writes a registry with one head of that size (random bytes in model.safetensors' place: the hash
reads bytes, not tensors) under a temporary directory, then times both on the live pointer, side
by side, `--repeat` times each. The first hash also pays for reading the file from disk when the
page cache does not hold it; the figures printed are the median of the repeats (warm cache, the
hash's best case).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from decoder import draft_version
from retrain.registry import HeadRegistry, head_version

CHUNK = 1 << 24


def write_head(directory: Path, size: int) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "llama"}) + "\n", encoding="utf-8")
    with (directory / "model.safetensors").open("wb") as handle:
        for offset in range(0, size, CHUNK):
            handle.write(os.urandom(min(CHUNK, size - offset)))
    return directory


def median_seconds(name: Callable[[Path], str], path: Path, repeat: int) -> tuple[float, str]:
    times, version = [], ""
    for _ in range(repeat):
        started = time.perf_counter()
        version = name(path)
        times.append(time.perf_counter() - started)
    return statistics.median(times), version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="size of the head's weights file in GiB")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="specwatch-head-version-") as scratch:
        head = write_head(Path(scratch) / "seed", int(args.gib * (1 << 30)))
        registry = HeadRegistry(Path(scratch) / "heads")
        seed = registry.ensure_seed(head)
        live = registry.root / "live"
        hashed_s, hashed = median_seconds(draft_version, live, args.repeat)
        read_s, read = median_seconds(head_version, live, args.repeat)
    assert hashed == read == seed.version, (hashed, read, seed.version)
    print(
        json.dumps(
            {
                "head_gib": args.gib,
                "draft_version_s": round(hashed_s, 4),
                "head_version_s": round(read_s, 6),
                "ratio": round(hashed_s / read_s, 1),
                "same_version": True,
            }
        )
    )


if __name__ == "__main__":
    main()
