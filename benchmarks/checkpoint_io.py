"""Checkpoint save/load speed and peak memory against raw file I/O.

What it measures, in one run, on one state tree of ``--size-mb`` MB
(1 MB = 10**6 bytes) of float32 in 20 arrays plus 1,000 small entries
(ints, floats, strs, bools and small arrays in nested dicts):

* the raw baseline: the arrays' bytes written to one new file, then the file
  and its directory fsynced ("raw write+fsync"); and the file read back with
  ``readinto`` into a fresh 64-byte-aligned buffer, as amber's reader does
  ("raw read"). For information also ``f.read()`` (a 16-byte-aligned
  buffer, much slower on some CPUs), and the raw read followed by one
  xxh3_128 pass, or hashed chunk by chunk as it is read;
* for each registered format (or ``--formats``): ``amber.save`` (durable and
  atomic: fsyncs every file and directory) and ``amber.load`` (reads each
  file whole, verifies its digest, then decodes), each save to a fresh path;
* the ratios save / raw write+fsync and load / raw read, on the median of
  ``--repeat`` runs (the best run is shown too), after ``--warmup`` untimed
  rounds. Right before each timed operation, twice the state's size of
  memory is touched and freed ("settling", see :func:`prefault`), so that
  no operation pays for a VM host's first touch of guest memory;
* reads twice: *warm* (right after the file was written, as a load after a
  save finds it: the pages are in the page cache) and *cold* (after
  ``posix_fadvise(DONTNEED)`` on that file alone, which evicts its clean
  pages; nothing system-wide is dropped). Raw read and load always run under
  the same condition;
* the extra peak memory of a save and of a load, each in a fresh
  subprocess: the tracemalloc peak (numpy's allocations are traced) minus
  what was traced before the save, or minus the loaded state's own bytes for
  a load; and the growth of the peak RSS (``VmHWM``, reset through
  ``/proc/self/clear_refs`` once the state is built) over the RSS before,
  minus the state's bytes for a load. Reported as a fraction of the state's
  bytes.

Targets (issue "checkpoint engine"): save <= 1.5x raw write+fsync, warm load
<= 1.5x raw read, extra peak memory of save and load <= 0.25x the state.
Cold loads are reported for information.

Run from the repository root::

    python benchmarks/checkpoint_io.py                        # 100 MB, 3 runs, all formats
    python benchmarks/checkpoint_io.py --size-mb 1 --repeat 1 # smoke run (CI), never fails on targets
    python benchmarks/checkpoint_io.py --check --json io.json # exit 1 if a target is missed
    PYTHONPATH=tests/plugins/amber_npz python benchmarks/checkpoint_io.py \\
        --plugin amber_npz --formats pickle,msgpack,npz       # a plugin that is not installed

Exit status: 0; 1 with ``--check`` when a target is missed; 2 when a format
fails to save or load, or reads back something else than was saved.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from amber.durable import fsync_dir

N_ARRAYS = 20
N_SMALL = 1000
SAVE_TARGET = 1.5
LOAD_TARGET = 1.5
MEMORY_TARGET = 0.25
MB = 1_000_000
ALIGN = 64


# --------------------------------------------------------------------------
# the state tree
# --------------------------------------------------------------------------


def build_state(size_mb: float, seed: int = 0) -> dict[str, Any]:
    """The benchmark's state tree; the arrays are filled in place (no temporary copies)."""
    rng = np.random.default_rng(seed)
    per = max(1, int(size_mb * MB) // 4 // N_ARRAYS)
    weights = {}
    for i in range(N_ARRAYS):
        a = np.empty(per, dtype=np.float32)
        rng.random(out=a, dtype=np.float32)
        weights[f"layer_{i:02d}"] = a
    small: dict[str, Any] = {}
    i = 0
    for g in range(10):
        group: dict[str, Any] = {}
        for s in range(10):
            leaves: dict[str, Any] = {}
            for k in range(N_SMALL // 100):
                kind = i % 5
                if kind == 0:
                    leaves[f"k{k}"] = i * 7 - 300
                elif kind == 1:
                    leaves[f"k{k}"] = i * 0.5 + 0.25
                elif kind == 2:
                    leaves[f"k{k}"] = f"value-{i}"
                elif kind == 3:
                    leaves[f"k{k}"] = np.arange(i % 16 + 1, dtype=np.int32 if i % 2 else np.float64)
                else:
                    leaves[f"k{k}"] = bool(i % 3)
                i += 1
            group[f"s{s}"] = leaves
        small[f"g{g}"] = group
    return {"weights": weights, "small": small, "step": 12345}


def tree_bytes(tree: Any) -> int:
    """The state's own data bytes: array data, str and bytes payloads, 8 per number."""
    if isinstance(tree, dict):
        return sum(tree_bytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(tree_bytes(v) for v in tree)
    if isinstance(tree, np.ndarray):
        return int(tree.nbytes)
    if isinstance(tree, (str, bytes)):
        return len(tree)
    return 8


def big_arrays(state: dict[str, Any]) -> list[np.ndarray]:
    return list(state["weights"].values())


def same_tree(a: Any, b: Any) -> bool:
    """Exact equality of two state trees (lists and tuples count as equal)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same_tree(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same_tree, a, b))
    if isinstance(a, np.ndarray):
        return (
            isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(np.array_equal(a, b))
        )
    return type(a) is type(b) and a == b


# --------------------------------------------------------------------------
# file system helpers
# --------------------------------------------------------------------------


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as the kernel reports them."""
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def evict(path: Path) -> None:
    """Drop the clean cached pages of one file, or of every file under a directory."""
    files = [path] if path.is_file() else [Path(d) / n for d, _, ns in os.walk(path) for n in ns]
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def raw_write(arrays: list[np.ndarray], path: Path) -> None:
    """Write the arrays' bytes to one new file; fsync it and its directory."""
    with open(path, "xb", buffering=0) as f:
        for a in arrays:
            mv = a.data.cast("B")
            done = 0
            while done < mv.nbytes:
                done += f.write(mv[done:]) or 0
        os.fsync(f.fileno())
    fsync_dir(path.parent)


def raw_read(path: Path) -> np.ndarray:
    """Read a whole file into a fresh 64-byte-aligned buffer, as amber's reader does.

    The alignment matters: on some CPUs the kernel's copy to user memory is
    much slower into a buffer that is only 16-byte aligned (numpy's default
    for a fresh array, and what ``f.read()`` gives); see :func:`raw_read_bytes`.
    """
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        raw = np.empty(size + ALIGN, dtype=np.uint8)
        offset = (-raw.ctypes.data) % ALIGN
        buf = raw[offset : offset + size]
        mv = buf.data
        got = 0
        while got < size:
            n = f.readinto(mv[got:])
            if not n:
                raise OSError(f"{path} shrank while reading")
            got += n
    return buf


def raw_read_then_digest(path: Path) -> str:
    """:func:`raw_read`, then one xxh3_128 pass over the buffer (what amber's reader does)."""
    import xxhash

    return xxhash.xxh3_128(raw_read(path).data).hexdigest()


def raw_read_chunk_digest(path: Path, chunk: int = 4 << 20) -> str:
    """:func:`raw_read` in ``chunk``-byte reads, each hashed while still in the CPU cache."""
    import xxhash

    h = xxhash.xxh3_128()
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        raw = np.empty(size + ALIGN, dtype=np.uint8)
        offset = (-raw.ctypes.data) % ALIGN
        mv = raw[offset : offset + size].data
        got = 0
        while got < size:
            n = f.readinto(mv[got : got + chunk])
            if not n:
                raise OSError(f"{path} shrank while reading")
            h.update(mv[got : got + n])
            got += n
    return h.hexdigest()


def raw_read_bytes(path: Path) -> bytes:
    """Read a whole file with plain ``f.read()`` (for information)."""
    with open(path, "rb") as f:
        return f.read()


def mem_available() -> int:
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def prefault(nbytes: int, chunk: int = 256 * MB) -> float:
    """Touch ``nbytes`` of fresh memory, then free it; return the seconds it took.

    Called right before each timed operation ("settling"). In a VM whose RAM
    the host backs lazily and takes back when the guest frees it (virtio
    balloon free page reporting, as on Firecracker), the first touch of a
    page costs a host page fault: about 2 ms/MB here, several times a read
    from the page cache. Without settling, that cost lands on whichever timed
    operation happens to get such pages (the buffer of a load, the page cache
    of a save), differently from run to run. Just-freed pages are handed out
    again first, so the operation right after this runs on backed memory, as
    it would on bare metal.
    """
    t0 = time.perf_counter()
    held = []
    while nbytes > 0:
        a = np.empty(min(chunk, nbytes), dtype=np.uint8)
        a[::4096] = 1
        held.append(a)
        nbytes -= a.nbytes
    del held
    return time.perf_counter() - t0


def fs_of(path: Path) -> dict[str, str]:
    """The mount (device, type, options) holding ``path``, from /proc/mounts."""
    best: dict[str, str] = {}
    real = os.path.realpath(path)
    with contextlib.suppress(OSError), open("/proc/mounts", encoding="utf-8") as f:
        for line in f:
            dev, mnt, typ, opts, *_ = line.split()
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(
                best.get("mount", "")
            ):
                best = {"device": dev, "mount": mnt, "type": typ, "options": opts}
    return best


def machine_info(bench_dir: Path) -> dict[str, Any]:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gib": mem_gib,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "bench_dir": str(bench_dir),
        "filesystem": fs_of(bench_dir),
    }


# --------------------------------------------------------------------------
# amber
# --------------------------------------------------------------------------


def plugin_manager(plugins: list[str]) -> Any:
    """None (the process's default plugin manager), or a fresh one with ``plugins`` registered."""
    if not plugins:
        return None
    from amber.plugin_manager import get_plugin_manager

    pm = get_plugin_manager()
    for name in plugins:
        module = importlib.import_module(name)
        if not pm.is_registered(module):
            pm.register(module, name=name)
    return pm


def format_names(pm: Any) -> list[str]:
    from amber.registry import get_registry

    return get_registry(pm).names()


# --------------------------------------------------------------------------
# memory, in a fresh subprocess per measurement
# --------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_hwm() -> bool:
    """Reset this process's peak RSS (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kib("VmHWM") <= _status_kib("VmRSS") + 64


def child(args: argparse.Namespace) -> int:
    """One memory measurement: print a JSON object with the extra peak bytes."""
    import amber
    import amber.checkpoint  # noqa: F401 - imported before measuring
    from amber.registry import get_registry

    pm = plugin_manager(args.plugin)
    get_registry(pm).get(args.child_format)  # builds the registry, imports the plugins
    op, method = args.child.split(":")
    state = build_state(args.size_mb) if op == "save" else None
    state_bytes = tree_bytes(state) if state is not None else 0
    gc.collect()
    out: dict[str, Any] = {"op": op, "method": method, "format": args.child_format}
    if method == "tracemalloc":
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        if op == "save":
            amber.save(state, args.child_path, format=args.child_format, pm=pm)
        else:
            state = amber.load(args.child_path, allow_pickle=True, pm=pm)
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        if op == "load":
            state_bytes = tree_bytes(state)
            out["retained_bytes"] = current - before - state_bytes
        out["extra_bytes"] = peak - before - (state_bytes if op == "load" else 0)
    else:
        rss_before = _status_kib("VmRSS") * 1024
        out["hwm_reset"] = _reset_hwm()
        out["hwm_before"] = _status_kib("VmHWM") * 1024
        if op == "save":
            amber.save(state, args.child_path, format=args.child_format, pm=pm)
        else:
            state = amber.load(args.child_path, allow_pickle=True, pm=pm)
            state_bytes = tree_bytes(state)
        hwm = _status_kib("VmHWM") * 1024
        out["extra_bytes"] = hwm - rss_before - (state_bytes if op == "load" else 0)
    out["state_bytes"] = state_bytes
    print(json.dumps(out))
    return 0


def measure_memory(args: argparse.Namespace, fmt: str, op: str, method: str, path: Path) -> dict[str, Any]:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        f"{op}:{method}",
        "--child-format",
        fmt,
        "--child-path",
        str(path),
        "--size-mb",
        str(args.size_mb),
    ]
    for p in args.plugin:
        cmd += ["--plugin", p]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement {op}/{method}/{fmt} failed:\n{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------


def timed(fn: Any, *a: Any, **kw: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn(*a, **kw)
    return time.perf_counter() - t0, result


def summary(times: list[float]) -> dict[str, Any]:
    return {"median_s": statistics.median(times), "best_s": min(times), "runs_s": times}


def run(args: argparse.Namespace, formats: list[str], pm: Any, bench: Path) -> dict[str, Any]:
    import amber
    from amber.digest import new_hasher

    state = build_state(args.size_mb)
    arrays = big_arrays(state)
    state_bytes = tree_bytes(state)
    array_bytes = sum(a.nbytes for a in arrays)
    conditions = ["warm"] + ([] if args.no_cold else ["cold"])
    if args.settle_mb is None:  # a buffer and the page cache of one state, and some
        settle_bytes = 2 * state_bytes + 16 * MB
    else:
        settle_bytes = int(args.settle_mb * MB)
    settle_bytes = min(settle_bytes, mem_available() // 2)
    settle_s: list[float] = []

    def measure(fn: Any, *a: Any, **kw: Any) -> tuple[float, Any]:
        if settle_bytes > 0:
            settle_s.append(prefault(settle_bytes))
        return timed(fn, *a, **kw)

    times: dict[str, list[float]] = {"raw_write": []}
    for c in conditions:
        times[f"raw_read_{c}"] = []
    times["raw_read_bytes_warm"] = []
    times["raw_read_digest_warm"] = []
    times["raw_read_chunk_digest_warm"] = []
    for fmt in formats:
        times[f"{fmt}_save"] = []
        for c in conditions:
            times[f"{fmt}_load_{c}"] = []
    errors: dict[str, str] = {}
    last_ckpt: dict[str, Path] = {}

    for r in range(-args.warmup, args.repeat):  # r < 0: warm-up rounds, not recorded
        rec = times if r >= 0 else {k: [] for k in times}
        gc.collect()
        raw = bench / f"raw-{r}.bin"
        t, _ = measure(raw_write, arrays, raw)
        rec["raw_write"].append(t)
        for c in conditions:
            if c == "cold":
                evict(raw)
            t, buf = measure(raw_read, raw)
            rec[f"raw_read_{c}"].append(t)
            del buf
            if c == "warm":
                t, buf = measure(raw_read_bytes, raw)
                rec["raw_read_bytes_warm"].append(t)
                del buf
                t, d1 = measure(raw_read_then_digest, raw)
                rec["raw_read_digest_warm"].append(t)
                t, d2 = measure(raw_read_chunk_digest, raw)
                rec["raw_read_chunk_digest_warm"].append(t)
                if d1 != d2:
                    raise AssertionError("chunked and whole-buffer digests differ")
        for fmt in formats:
            if fmt in errors:
                continue
            path = bench / f"{fmt}-{r}"
            try:
                gc.collect()
                t, _ = measure(amber.save, state, path, format=fmt, pm=pm)
                rec[f"{fmt}_save"].append(t)
                for c in conditions:
                    if c == "cold":
                        evict(path)
                    gc.collect()
                    t, loaded = measure(amber.load, path, allow_pickle=True, pm=pm)
                    rec[f"{fmt}_load_{c}"].append(t)
                    if r == -args.warmup and c == "warm" and not same_tree(state, loaded):
                        raise AssertionError("the loaded state differs from the saved one")
                    del loaded
                last_ckpt[fmt] = path
            except Exception as e:  # report, go on with the other formats
                errors[fmt] = f"{type(e).__name__}: {e}"

    # one digest pass over the same bytes, for scale
    h = new_hasher()
    t0 = time.perf_counter()
    for a in arrays:
        h.update(a.data.cast("B"))
    h.hexdigest()
    digest_s = time.perf_counter() - t0

    memory: dict[str, dict[str, Any]] = {}
    if not args.no_memory:
        # Memory numbers do not depend on timing, so the subprocesses run side by side.
        jobs = {}
        with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
            for fmt in formats:
                if fmt in errors:
                    continue
                for op in ("save", "load"):
                    for method in ("tracemalloc", "rss"):
                        path = last_ckpt[fmt] if op == "load" else bench / f"{fmt}-mem-{method}"
                        jobs[fmt, op, method] = pool.submit(measure_memory, args, fmt, op, method, path)
        for (fmt, op, method), job in jobs.items():
            try:
                m = job.result()
            except Exception as e:
                errors.setdefault(fmt, str(e))
                continue
            m["fraction"] = m["extra_bytes"] / state_bytes
            memory.setdefault(fmt, {})[f"{op}_{method}"] = m

    return {
        "state_bytes": state_bytes,
        "array_bytes": array_bytes,
        "repeat": args.repeat,
        "conditions": conditions,
        "times": {k: summary(v) for k, v in times.items() if v},
        "digest_pass_s": digest_s,
        "memory": memory,
        "errors": errors,
        "settle_bytes": settle_bytes,
        "settle_s": settle_s,
    }


def evaluate(res: dict[str, Any], formats: list[str]) -> list[dict[str, Any]]:
    """One row per (format, target) with the measured ratio and whether it passes."""
    t = res["times"]
    rows = []
    for fmt in formats:
        if f"{fmt}_save" in t:
            rows.append(
                {
                    "format": fmt,
                    "target": "save / raw write+fsync",
                    "limit": SAVE_TARGET,
                    "value": t[f"{fmt}_save"]["median_s"] / t["raw_write"]["median_s"],
                }
            )
        if f"{fmt}_load_warm" in t:
            rows.append(
                {
                    "format": fmt,
                    "target": "load / raw read (warm)",
                    "limit": LOAD_TARGET,
                    "value": t[f"{fmt}_load_warm"]["median_s"] / t["raw_read_warm"]["median_s"],
                }
            )
        mem = res["memory"].get(fmt, {})
        for op in ("save", "load"):
            vals = [mem[k]["fraction"] for k in (f"{op}_tracemalloc", f"{op}_rss") if k in mem]
            if vals:
                rows.append(
                    {
                        "format": fmt,
                        "target": f"extra peak memory, {op} / state",
                        "limit": MEMORY_TARGET,
                        "value": max(vals),
                    }
                )
    for row in rows:
        row["ok"] = row["value"] <= row["limit"]
    return rows


def report(
    res: dict[str, Any], formats: list[str], info: dict[str, Any], rows: list[dict[str, Any]], check: bool
) -> None:
    t = res["times"]
    sb = res["state_bytes"]
    fs = info["filesystem"]
    print(
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['mem_gib']} GiB RAM; "
        f"Python {info['python']}, numpy {info['numpy']}"
    )
    print(f"Benchmark dir: {info['bench_dir']} ({fs.get('type', '?')} on {fs.get('device', '?')})")
    if res["settle_bytes"] and res["settle_s"]:
        per_mb = [x * 1e3 / (res["settle_bytes"] / MB) for x in res["settle_s"]]
        print(
            f"Settling: {res['settle_bytes'] / MB:.0f} MB touched and freed before each timed operation; "
            f"first {per_mb[0]:.2f} ms/MB, median {statistics.median(per_mb):.2f} ms/MB, "
            f"max {max(per_mb):.2f} ms/MB ({len(per_mb)} times)"
        )
    else:
        print("Settling: off")
    print(
        f"State: {sb / MB:.2f} MB ({res['array_bytes'] / MB:.2f} MB in {N_ARRAYS} float32 arrays "
        f"+ {N_SMALL} small entries); {res['repeat']} run(s), ratios on the median"
    )
    print()
    print("| operation | format | median (s) | best (s) | MB/s (median) | ratio (median) | ratio (best) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")

    def line(label: str, fmt: str, key: str, base: str | None) -> None:
        if key not in t:
            return
        med, best = t[key]["median_s"], t[key]["best_s"]
        r_med = f"{med / t[base]['median_s']:.2f}x" if base else "1.00x"
        r_best = f"{best / t[base]['best_s']:.2f}x" if base else "1.00x"
        rate = res["array_bytes"] / MB / med
        print(f"| {label} | {fmt} | {med:.4f} | {best:.4f} | {rate:.0f} | {r_med} | {r_best} |")

    line("raw write+fsync", "-", "raw_write", None)
    for c in res["conditions"]:
        line(f"raw read ({c})", "-", f"raw_read_{c}", None)
        if c == "warm":
            line("raw read (warm), f.read()", "-", "raw_read_bytes_warm", "raw_read_warm")
            line("raw read, then xxh3_128 (warm)", "-", "raw_read_digest_warm", "raw_read_warm")
            line("raw read + xxh3_128 per 4 MiB (warm)", "-", "raw_read_chunk_digest_warm", "raw_read_warm")
    for fmt in formats:
        line("save", fmt, f"{fmt}_save", "raw_write")
        for c in res["conditions"]:
            line(f"load ({c})", fmt, f"{fmt}_load_{c}", f"raw_read_{c}")
    print()
    print(
        f"For scale: one xxh3_128 pass over the {res['array_bytes'] / MB:.0f} MB of arrays in memory "
        f"took {res['digest_pass_s']:.4f} s."
    )

    if res["memory"]:
        print()
        print("Extra peak memory, each in a fresh subprocess (fraction of the state's bytes):")
        print()
        print(
            "| format | operation | tracemalloc extra (MB) | tracemalloc fraction | "
            "peak RSS extra (MB) | peak RSS fraction |"
        )
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        for fmt, mem in res["memory"].items():
            for op in ("save", "load"):
                tm, rss = mem.get(f"{op}_tracemalloc"), mem.get(f"{op}_rss")
                if not tm or not rss:
                    continue
                note = "" if rss.get("hwm_reset", True) else " (VmHWM not reset)"
                print(
                    f"| {fmt} | {op} | {tm['extra_bytes'] / MB:.2f} | {tm['fraction']:.3f} | "
                    f"{rss['extra_bytes'] / MB:.2f}{note} | {rss['fraction']:.3f} |"
                )

    print()
    print("| format | target | measured | limit | result |")
    print("| --- | --- | ---: | ---: | --- |")
    for row in rows:
        print(
            f"| {row['format']} | {row['target']} | {row['value']:.2f}x | {row['limit']:.2f}x | "
            f"{'pass' if row['ok'] else 'MISS'} |"
        )
    if not check:
        print(
            "\n(--check not given: a missed target does not change the exit status; the targets "
            "are meant for full-size runs.)"
        )
    for fmt, err in res["errors"].items():
        print(f"\nERROR in format {fmt}: {err}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=float, default=100.0, help="state size in MB (default 100)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each operation (default 3)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed rounds of every operation first (default 1)"
    )
    parser.add_argument("--formats", help="comma-separated formats (default: every registered one)")
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="register this importable module as a plugin too (repeatable)",
    )
    parser.add_argument("--dir", help="where to write (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the files written")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-cache reads")
    parser.add_argument(
        "--settle-mb",
        type=float,
        default=None,
        help="MB of memory to touch and free right before each timed operation (default: "
        "twice the state's size + 16; 0: off); see prefault()",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    parser.add_argument("--json", metavar="PATH", help="also write every number as JSON")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when a target is missed (for full-size runs, not smoke runs)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-format", help=argparse.SUPPRESS)
    parser.add_argument("--child-path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    args.repeat = max(1, args.repeat)
    args.warmup = max(0, args.warmup)

    pm = plugin_manager(args.plugin)
    known = format_names(pm)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()] if args.formats else known
    unknown = [f for f in formats if f not in known]
    if unknown:
        parser.error(f"unknown format(s) {', '.join(unknown)}; registered: {', '.join(known)}")

    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    bench = Path(tempfile.mkdtemp(prefix="amber-bench-", dir=args.dir))
    try:
        info = machine_info(bench)
        res = run(args, formats, pm, bench)
    finally:
        if not args.keep:
            shutil.rmtree(bench, ignore_errors=True)
    rows = evaluate(res, formats)
    report(res, formats, info, rows, args.check)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {"machine": info, "size_mb": args.size_mb, "formats": formats, "targets": rows, **res},
                f,
                indent=2,
            )
    if res["errors"]:
        return 2
    if args.check and not all(row["ok"] for row in rows):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
