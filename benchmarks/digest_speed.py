"""Throughput of the digests amber can record: sha256, blake2b, blake3 and xxh3_128.

Each algorithm hashes the same in-memory buffer of ``--size-mb`` MB (random
bytes, 1 MB = 10**6 bytes) in a single ``update`` call, ``--repeat`` times;
the best run is reported in GB/s (10**9 bytes per second), as a markdown
table. Nothing touches the disk. Run from the repository root::

    python benchmarks/digest_speed.py                  # 100 MB, best of 5
    python benchmarks/digest_speed.py --size-mb 1 --repeat 1   # smoke run
    python benchmarks/digest_speed.py --json digest.json

This is the measurement behind amber's default digest (``amber.digest``) and the
cryptographic one signed (pickle) checkpoints record (BLAKE3, one thread).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import blake3
import numpy as np
import xxhash

ALGORITHMS: dict[str, Callable[[], Any]] = {
    "sha256": hashlib.sha256,
    "blake2b": hashlib.blake2b,
    "blake3": blake3.blake3,  # one thread, as amber hashes
    "xxh3_128": xxhash.xxh3_128,
}


def measure(factory: Callable[[], Any], buf: memoryview, repeat: int) -> list[float]:
    """Seconds for each of ``repeat`` full digests of ``buf``."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        h = factory()
        h.update(buf)
        h.hexdigest()
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=100.0, help="buffer size in MB (default 100)")
    parser.add_argument(
        "--repeat", type=int, default=5, help="runs per algorithm; the best counts (default 5)"
    )
    parser.add_argument(
        "--algorithms",
        default=",".join(ALGORITHMS),
        help="comma-separated subset of " + ", ".join(ALGORITHMS),
    )
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    args = parser.parse_args(argv)

    names = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    unknown = [a for a in names if a not in ALGORITHMS]
    if unknown:
        parser.error(f"unknown algorithm(s): {', '.join(unknown)}")
    nbytes = int(args.size_mb * 1_000_000)
    buf = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8).data

    results = []
    for name in names:
        ALGORITHMS[name]().update(buf[: 1 << 20])  # warm up
        times = measure(ALGORITHMS[name], buf, max(1, args.repeat))
        best = min(times)
        results.append({"algorithm": name, "best_s": best, "gb_per_s": nbytes / best / 1e9})

    fastest = max(r["gb_per_s"] for r in results)
    print(f"Digest throughput over {nbytes / 1e6:g} MB in memory, best of {max(1, args.repeat)}:")
    print()
    print("| algorithm | best time (s) | GB/s | relative to fastest |")
    print("| --- | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['algorithm']} | {r['best_s']:.4f} | {r['gb_per_s']:.2f} | {r['gb_per_s'] / fastest:.2f}x |"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "size_bytes": nbytes,
                    "repeat": args.repeat,
                    "results": results,
                    "xxhash_version": xxhash.VERSION,
                    "python": sys.version.split()[0],
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
