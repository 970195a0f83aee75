"""Replay-buffer checkpoints: a SAC whose buffer holds 1M Pendulum transitions, saved and restored.

What it measures, in one run:

* *the algorithm*: ``SACConfig().environment("Pendulum-v1")`` with
  ``.checkpointing(store_replay_buffer=True)`` and every other setting at its
  default (model [256, 256], buffer capacity 1,000,000) but learning from
  its 100th transition, trained for ``--train-steps`` env steps (default
  300: 200 updates, so the three Adam optimizers hold moments), then its
  buffer filled to ``--transitions`` rows (default 1,000,000: it wraps, so
  the cursor is not at 0) through the public ``ReplayBuffer.add``, in chunks
  of 100,000 realistic Pendulum transitions (random angle, velocity and
  torque; the next observation and the reward from Pendulum's own dynamics;
  every 200th row truncated), with the same columns and dtypes that
  sampling adds (obs, new_obs float32 [3]; actions float32 [1]; rewards
  float32; terminateds, truncateds bool): 34 bytes a row.
* *the baseline*, in the same run: the buffer's column arrays written to one
  new file, then the file and its directory fsynced ("raw write+fsync", the
  same helper as ``benchmarks/checkpoint_io.py``), and that file read back
  into a fresh 64-byte-aligned buffer ("raw read", warm page cache).
* for each format (``--formats``, default pickle and msgpack): the durable
  ``algo.save(dir, format=F)`` (atomic; every file and directory fsynced),
  ``Algorithm.from_checkpoint(dir)`` and ``algo.restore(dir)`` on a built
  SAC (both read the page-cache-warm checkpoint, as a load after a save
  does); for information ``config.build()`` alone, which from_checkpoint
  includes. Medians of ``--repeat`` runs after one warm-up round; before each
  timed operation twice the buffer's size of memory is touched and freed
  ("settling", see ``checkpoint_io.prefault``). The restored buffers are
  checked to equal the saved one row for row, with the same cursor and RNG.
* for information, the same ``algo.save`` with ``store_replay_buffer=False``:
  what the rest of the checkpoint costs (policy weights, target networks,
  the three Adam states, manifests, the engine's fsyncs of every file and
  directory), so that the rows' own share of a save shows.
* *peak memory of a save*, in a fresh subprocess per format: the algorithm
  is built and its buffer filled, then the peak RSS (``VmHWM``) is reset and
  one ``algo.save`` runs; reported is the growth of the peak over the RSS
  right before the save, as a fraction of the buffer's bytes. For
  information the same for ``Algorithm.from_checkpoint`` (its growth minus
  the restored buffer's own bytes; it also builds a SAC and its env).

Targets (issue 4): save <= 1.5x raw write+fsync of the buffer's bytes; the
extra peak memory of a save < 1.0x the buffer's bytes (it must not double).

Run from the repository root::

    python benchmarks/replay_buffer_io.py                  # 1M transitions, 5 runs, pickle and msgpack
    python benchmarks/replay_buffer_io.py --smoke          # CI: 20,000 transitions, 1 run
    python benchmarks/replay_buffer_io.py --check --json rb.json

Exit status: 0; 1 with ``--check`` when a target is missed; 2 when a
restored buffer differs from the saved one.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from checkpoint_io import (
    MB,
    _reset_hwm,
    _status_kib,
    load_average,
    machine_info,
    mem_available,
    prefault,
    raw_read,
    raw_write,
)

SAVE_TARGET = 1.5
MEMORY_TARGET = 1.0
CHUNK = 100_000
EPISODE = 200


# --------------------------------------------------------------------------
# the algorithm and its buffer
# --------------------------------------------------------------------------


def pendulum_transitions(n: int, rng: np.random.Generator, start: int = 0) -> dict[str, np.ndarray]:
    """``n`` Pendulum-v1 transitions from random states and torques, stepped with Pendulum's dynamics."""
    g, m, length, dt, max_speed = 10.0, 1.0, 1.0, 0.05, 8.0
    th = rng.uniform(-np.pi, np.pi, n)
    thdot = rng.uniform(-max_speed, max_speed, n)
    u = rng.uniform(-2.0, 2.0, n)
    angle = ((th + np.pi) % (2 * np.pi)) - np.pi
    reward = -(angle**2 + 0.1 * thdot**2 + 0.001 * u**2)
    new_thdot = np.clip(thdot + (3 * g / (2 * length) * np.sin(th) + 3.0 / (m * length**2) * u) * dt,
                        -max_speed, max_speed)
    new_th = th + new_thdot * dt
    steps = np.arange(start, start + n)

    def obs(theta: np.ndarray, velocity: np.ndarray) -> np.ndarray:
        return np.stack([np.cos(theta), np.sin(theta), velocity], axis=1).astype(np.float32)

    return {"obs": obs(th, thdot), "actions": u.astype(np.float32)[:, None],
            "rewards": reward.astype(np.float32), "new_obs": obs(new_th, new_thdot),
            "terminateds": np.zeros(n, dtype=bool), "truncateds": (steps + 1) % EPISODE == 0}


def make_config(hiddens: list[int], train_steps: int = 300) -> Any:
    from amber.algorithms.sac import SACConfig

    return (SACConfig().environment("Pendulum-v1").debugging(seed=0)
            .checkpointing(store_replay_buffer=True)
            .training(model={"fcnet_hiddens": hiddens},
                      num_steps_sampled_before_learning_starts=max(1, train_steps // 3))
            .reporting(min_sample_timesteps_per_iteration=train_steps))


def build_filled(transitions: int, hiddens: list[int], train_steps: int = 300) -> Any:
    """A SAC trained for ``train_steps`` env steps (updates from a third of them on), its buffer
    then filled to ``transitions`` rows."""
    algo = make_config(hiddens, train_steps).build()
    algo.train()
    buffer = algo.replay_buffers["default_policy"]
    rng = np.random.default_rng(1)
    added = 0
    while added < transitions:
        n = min(CHUNK, transitions - added)
        buffer.add(pendulum_transitions(n, rng, start=added))
        added += n
    return algo


def buffer_arrays(algo: Any) -> list[np.ndarray]:
    """The buffer's rows, column by column (views of its storage)."""
    return list(algo.replay_buffers["default_policy"].get_state()["columns"].values())


def same_buffer(a: Any, b: Any) -> bool:
    """Equal rows, cursor, counters and RNG state."""
    sa, sb = a.get_state(), b.get_state()
    meta = ("capacity", "size", "cursor", "num_added", "rng")
    return (all(sa[k] == sb[k] for k in meta) and list(sa["columns"]) == list(sb["columns"])
            and all(x.dtype == y.dtype and np.array_equal(x, y)
                    for x, y in zip(sa["columns"].values(), sb["columns"].values(), strict=True)))


# --------------------------------------------------------------------------
# memory, in a fresh subprocess per measurement
# --------------------------------------------------------------------------


def child(args: argparse.Namespace) -> int:
    """One memory measurement: print a JSON object with the peak RSS growth."""
    from amber.algorithms.algorithm import Algorithm

    op, fmt, path = args.child, args.child_format, args.child_path
    out: dict[str, Any] = {"op": op, "format": fmt}
    if op == "save":
        algo = build_filled(args.transitions, args.hiddens, args.train_steps)
        buffer_bytes = algo.replay_buffers["default_policy"].nbytes
        gc.collect()
        rss_before = _status_kib("VmRSS") * 1024
        out["hwm_reset"] = _reset_hwm()
        algo.save(path, format=fmt)
        out["extra_bytes"] = _status_kib("VmHWM") * 1024 - rss_before
    else:
        import amber.algorithms.sac  # noqa: F401 - imported before measuring, as a server would

        gc.collect()
        rss_before = _status_kib("VmRSS") * 1024
        out["hwm_reset"] = _reset_hwm()
        algo = Algorithm.from_checkpoint(path)
        buffer_bytes = algo.replay_buffers["default_policy"].nbytes
        out["extra_bytes"] = _status_kib("VmHWM") * 1024 - rss_before - buffer_bytes
    out["buffer_bytes"] = buffer_bytes
    out["fraction"] = out["extra_bytes"] / buffer_bytes
    print(json.dumps(out))
    return 0


def measure_memory(args: argparse.Namespace, op: str, fmt: str, path: Path) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", op, "--child-format", fmt,
           "--child-path", str(path), "--transitions", str(args.transitions),
           "--train-steps", str(args.train_steps), "--hiddens", *map(str, args.hiddens)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement {op}/{fmt} failed:\n{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(args: argparse.Namespace, bench: Path) -> dict[str, Any]:
    from amber.algorithms.algorithm import Algorithm

    t0 = time.perf_counter()
    algo = build_filled(args.transitions, args.hiddens, args.train_steps)
    fill_s = time.perf_counter() - t0
    buffer = algo.replay_buffers["default_policy"]
    arrays = buffer_arrays(algo)
    buffer_bytes = sum(a.nbytes for a in arrays)
    target = make_config(args.hiddens).build()  # restored into, again and again
    settle = min(2 * buffer_bytes + 16 * MB, mem_available() // 2) if args.settle else 0
    times: dict[str, list[float]] = {"raw_write": [], "raw_read": [], "build": []}
    for fmt in args.formats:
        times.update({f"{fmt}_save": [], f"{fmt}_save_no_buffer": [], f"{fmt}_from_checkpoint": [],
                      f"{fmt}_restore": []})
    sizes: dict[str, int] = {}
    errors: list[str] = []

    def timed(fn: Any, *a: Any, **kw: Any) -> tuple[float, Any]:
        if settle:
            prefault(settle)
        gc.collect()
        start = time.perf_counter()
        result = fn(*a, **kw)
        return time.perf_counter() - start, result

    for r in range(-1, args.repeat):  # r = -1: warm-up, not recorded
        rec = times if r >= 0 else {k: [] for k in times}
        raw = bench / f"raw-{r}.bin"
        rec["raw_write"].append(timed(raw_write, arrays, raw)[0])
        t, buf = timed(raw_read, raw)
        rec["raw_read"].append(t)
        del buf
        raw.unlink()
        t, built = timed(make_config(args.hiddens).build)
        rec["build"].append(t)
        built.stop()
        for fmt in args.formats:
            path = bench / f"{fmt}-{r}"
            rec[f"{fmt}_save"].append(timed(algo.save, path, format=fmt)[0])
            sizes[fmt] = dir_bytes(path)
            t, clone = timed(Algorithm.from_checkpoint, path)
            rec[f"{fmt}_from_checkpoint"].append(t)
            rec[f"{fmt}_restore"].append(timed(target.restore, path)[0])
            if r == -1:
                for name, got in (("from_checkpoint", clone), ("restore", target)):
                    if not same_buffer(got.replay_buffers["default_policy"], buffer):
                        errors.append(f"{fmt}: the buffer after {name} differs from the saved one")
            clone.stop()
            del clone
            shutil.rmtree(path)
            algo.config.store_replay_buffer = False  # the same checkpoint without the rows
            try:
                rec[f"{fmt}_save_no_buffer"].append(timed(algo.save, path, format=fmt)[0])
                sizes[f"{fmt}_no_buffer"] = dir_bytes(path)
            finally:
                algo.config.store_replay_buffer = True
            shutil.rmtree(path)

    memory: dict[str, dict[str, Any]] = {}
    if not args.no_memory:
        for fmt in args.formats:
            path = bench / f"{fmt}-mem"
            memory[fmt] = {"save": measure_memory(args, "save", fmt, path)}
            memory[fmt]["load"] = measure_memory(args, "load", fmt, path)
            shutil.rmtree(path, ignore_errors=True)
    return {
        "transitions": args.transitions, "buffer_rows": len(buffer), "cursor": buffer.cursor,
        "buffer_bytes": buffer_bytes, "checkpoint_bytes": sizes, "fill_s": fill_s,
        "params": algo.get_policy().num_params(), "settle_bytes": settle, "repeat": args.repeat,
        "times": {k: {"median_s": statistics.median(v), "best_s": min(v), "runs_s": v}
                  for k, v in times.items() if v},
        "memory": memory, "errors": errors,
    }


def evaluate(res: dict[str, Any], formats: list[str]) -> list[dict[str, Any]]:
    t = res["times"]
    rows = []
    for fmt in formats:
        ratio = t[f"{fmt}_save"]["median_s"] / t["raw_write"]["median_s"]
        rows.append({"format": fmt, "target": "save / raw write+fsync of the buffer's bytes",
                     "limit": SAVE_TARGET, "value": ratio})
        if fmt in res["memory"]:
            rows.append({"format": fmt, "target": "extra peak RSS of a save / buffer bytes",
                         "limit": MEMORY_TARGET, "value": res["memory"][fmt]["save"]["fraction"]})
    for row in rows:
        strict = "RSS" in row["target"]  # "must not double": below 1.0x
        row["ok"] = row["value"] < row["limit"] if strict else row["value"] <= row["limit"]
    return rows


def report(res: dict[str, Any], info: dict[str, Any], formats: list[str], rows: list[dict[str, Any]],
           load_start: str) -> None:
    t, bb = res["times"], res["buffer_bytes"]
    fs = info["filesystem"]
    print(f"Machine: {info['cpu']}, {info['cores']} cores, {info['mem_gib']} GiB RAM; "
          f"Python {info['python']}, numpy {info['numpy']}; load average {load_start} at the start, "
          f"{load_average()} at the end")
    print(f"Benchmark dir: {info['bench_dir']} ({fs.get('type', '?')} on {fs.get('device', '?')})")
    print(f"SAC on Pendulum-v1, {res['params']:,} weights; replay buffer {res['buffer_rows']:,} rows "
          f"(cursor {res['cursor']:,}), {bb / MB:.1f} MB; filled in {res['fill_s']:.1f} s; "
          f"{res['repeat']} run(s), median (best); settling {res['settle_bytes'] / MB:.0f} MB")
    print()
    print("| operation | format | checkpoint (MB) | median (s) | best (s) | vs baseline (median) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")

    def line(label: str, fmt: str, key: str, base: str | None) -> None:
        med, best = t[key]["median_s"], t[key]["best_s"]
        ratio = f"{med / t[base]['median_s']:.2f}x" if base else "baseline"
        size = f"{res['checkpoint_bytes'][fmt] / MB:.1f}" if fmt in res["checkpoint_bytes"] else "-"
        print(f"| {label} | {fmt.split('_')[0]} | {size} | {med:.4f} | {best:.4f} | {ratio} |")

    line("raw write+fsync of the buffer's bytes", "-", "raw_write", None)
    line("raw read (warm)", "-", "raw_read", None)
    line("config.build() (no checkpoint)", "-", "build", None)
    for fmt in formats:
        line("algo.save (durable)", fmt, f"{fmt}_save", "raw_write")
        line("algo.save, store_replay_buffer=False", f"{fmt}_no_buffer", f"{fmt}_save_no_buffer", "raw_write")
        line("Algorithm.from_checkpoint", fmt, f"{fmt}_from_checkpoint", "raw_read")
        line("algo.restore", fmt, f"{fmt}_restore", "raw_read")
    print()
    for fmt in formats:
        rows_cost = t[f"{fmt}_save"]["median_s"] - t[f"{fmt}_save_no_buffer"]["median_s"]
        share = rows_cost / t["raw_write"]["median_s"]
        print(f"{fmt}: the rows add {rows_cost:.4f} s to a save ({share:.2f}x "
              f"raw write+fsync of their bytes); the rest of the checkpoint (policy weights, target "
              f"networks, three Adam states, {res['checkpoint_bytes'][fmt + '_no_buffer'] / MB:.1f} MB, and "
              f"the engine's manifests and fsyncs) takes {t[f'{fmt}_save_no_buffer']['median_s']:.4f} s.")
    if res["memory"]:
        print()
        print("Peak memory, each in a fresh subprocess (growth of VmHWM over the RSS before; for the load "
              "minus the restored buffer's own bytes):")
        print()
        print("| format | operation | extra peak (MB) | fraction of the buffer |")
        print("| --- | --- | ---: | ---: |")
        for fmt, mem in res["memory"].items():
            for op in ("save", "load"):
                m = mem[op]
                note = "" if m.get("hwm_reset", True) else " (VmHWM not reset)"
                print(f"| {fmt} | {op} | {m['extra_bytes'] / MB:.1f}{note} | {m['fraction']:.3f} |")
    print()
    print("| format | target | measured | limit | result |")
    print("| --- | --- | ---: | ---: | --- |")
    for row in rows:
        print(f"| {row['format']} | {row['target']} | {row['value']:.2f}x | {row['limit']:.2f}x | "
              f"{'pass' if row['ok'] else 'MISS'} |")
    for err in res["errors"]:
        print(f"\nERROR: {err}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transitions", type=int, default=1_000_000,
                        help="rows in the buffer (default 1000000, its capacity)")
    parser.add_argument("--hiddens", type=int, nargs="+", default=[256, 256], help="model (default 256 256)")
    parser.add_argument("--train-steps", type=int, default=300,
                        help="env steps trained before the fill (default 300: 200 updates)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs (default 5)")
    parser.add_argument("--formats", default="pickle,msgpack",
                        help="comma-separated (default pickle,msgpack)")
    parser.add_argument("--dir", help="where to write (default: a new temporary directory)")
    parser.add_argument("--no-settle", dest="settle", action="store_false", help="no settling")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    parser.add_argument("--smoke", action="store_true",
                        help="CI: 20,000 transitions, [32, 32], 30 env steps trained, 1 run")
    parser.add_argument("--json", metavar="PATH", help="also write every number as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-format", help=argparse.SUPPRESS)
    parser.add_argument("--child-path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    if args.smoke:
        args.transitions, args.hiddens, args.repeat, args.train_steps = 20_000, [32, 32], 1, 30
    args.repeat = max(1, args.repeat)
    args.formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    load_start = load_average()
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    bench = Path(tempfile.mkdtemp(prefix="amber-rb-bench-", dir=args.dir))
    try:
        info = machine_info(bench)
        res = run(args, bench)
    finally:
        shutil.rmtree(bench, ignore_errors=True)
    rows = evaluate(res, args.formats)
    report(res, info, args.formats, rows, load_start)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": info, "targets": rows, **res}, f, indent=2)
    if res["errors"]:
        return 2
    if args.check and not all(row["ok"] for row in rows):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
