"""Structure-aware fuzzing of every checkpoint loader: real checkpoints decoded, mutated, re-encoded.

Builds small msgpack checkpoints (PPO single- and multi-agent, PPO on Pendulum, DQN with its
replay buffer, a policy checkpoint, a plain ``amber.save`` state) and takes the frozen 1.0/2.0
msgpack fixtures of tests/fixtures; decodes their trees (``read_checkpoint(path, migrate=False)``),
mutates them (keys deleted, duplicated, renamed; types changed; extreme numbers; arrays of the
wrong shape, dtype or size; huge declared sizes; unknown RNG kinds; unregistered names and
placeholders; odd ids) and writes them back with amber's own writer at the original version, so
every digest is valid; or mutates a manifest and recomputes its digests. Worker processes load
each case with amber.load, Algorithm.from_checkpoint, Policy.from_checkpoint, an existing
algorithm's restore(), get_checkpoint_info and verify, under an audit hook (installed once per
worker) that records imports of modules not imported before, exec, compile, subprocess,
os.system/exec/spawn/fork and pickle.find_class; a module on sys.path, named by some mutations,
leaves a marker file if it is ever imported. A case passes when each load succeeds or raises a
CheckpointError within ``--case-timeout``, with no audit event (those under gymnasium's ``make``
of a registered id, which imports that env's module, are listed apart), leaving an algorithm
whose restore() failed as it was; loads whose memory grew over ``--mem-bound-mb`` are listed.
The mutations and seeds are in fuzz_mutations.py, the summary and report in fuzz_report.py.

Run: python benchmarks/fuzz_checkpoints.py --cases 2000 --seed 1 [--workers 2] [--json out.json]
Exits 1 on a hang, a crash, an audit event, code run, or a failed restore() that changed the
algorithm; exceptions other than CheckpointError are reported, with where they come from.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import queue
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
from fuzz_mutations import (
    MARKER_MODULE,
    ROOT,
    build_seeds,
    mutate_manifest,
    mutate_tree,
    register_names,
    seed_paths,
    slots,
)
from fuzz_report import REGISTERED_ENV, report, summarize

WATCHED = frozenset({"import", "exec", "compile", "subprocess.Popen", "os.system", "os.exec", "os.spawn",
                     "os.posix_spawn", "os.fork", "os.forkpty", "pickle.find_class", "ctypes.dlopen"})
GYM_MAKE = ("gymnasium/envs/registration.py", "load_env_creator")

# --------------------------------------------------------------------------- one worker


class Hang(BaseException):
    """The case ran past its time limit (a BaseException: no ``except Exception`` catches it)."""


class Worker:
    """Makes and loads cases in this process: the seeds decoded, a live algorithm per Algorithm
    seed (for restore()), every loader run once on each seed, then the audit hook installed."""

    def __init__(self, work: Path, seed: int, case_timeout: float) -> None:
        from amber.checkpoint import read_checkpoint

        register_names()
        self.work, self.seed, self.timeout = work, seed, case_timeout
        self.paths = seed_paths(work)
        self.seeds = {name: read_checkpoint(p, migrate=False) for name, p in self.paths.items()}
        self.live: dict[str, Any] = {}
        self.events: list[str] | None = None
        self.marker = work / f"marker-{os.getpid()}"
        os.environ["FUZZ_MARKER"] = str(self.marker)
        sys.path.insert(0, str(work / "hostile"))
        for name in self.seeds:  # import everything the loaders import on a good checkpoint
            self.live_algorithm(name)
            self.load_all(self.paths[name], name)
        sys.addaudithook(self.audit)

    def audit(self, event: str, args: tuple[Any, ...]) -> None:
        if self.events is None or event not in WATCHED or (event == "import" and args[0] in sys.modules):
            return
        frame, where, via = sys._getframe(1), "", ""
        while frame is not None:
            name = frame.f_code.co_filename
            if not where and "importlib" not in name and "<frozen" not in name and name != __file__:
                where = f"{name}:{frame.f_code.co_name}:{frame.f_lineno}"
            if name.endswith(GYM_MAKE[0]) and frame.f_code.co_name == GYM_MAKE[1]:
                via = REGISTERED_ENV  # the entry point of a gymnasium id: a registered name (rule 11)
            frame = frame.f_back
        self.events.append(f"{via}{event} {str(args[0] if args else '')[:80]!r} from {where or '?'}")

    def live_algorithm(self, name: str) -> Any:
        from amber.algorithms.algorithm import Algorithm

        if self.seeds[name].type == "Algorithm" and name not in self.live:
            try:
                self.live[name] = Algorithm.from_checkpoint(self.paths[name])
            except Exception:  # a fixture whose classes are not registered here: no restore() loader
                self.live[name] = None
        return self.live.get(name)

    def loaders(self, name: str) -> dict[str, Any]:
        import amber
        from amber.algorithms.algorithm import Algorithm
        from amber.policy.policy import Policy
        from amber.utils.checkpoints import get_checkpoint_info, verify

        found = {"amber.load": amber.load,
                 "Algorithm.from_checkpoint": lambda p: Algorithm.from_checkpoint(p).stop(),
                 "Policy.from_checkpoint": Policy.from_checkpoint, "get_checkpoint_info": get_checkpoint_info,
                 "verify": verify}
        if self.live_algorithm(name) is not None:
            found["restore"] = self.live[name].restore
        return found

    def load_all(self, path: Path, name: str) -> dict[str, Any]:
        """Each loader's outcome: "ok", "CheckpointError", "hang" or the exception (with its site)."""
        from amber.errors import CheckpointError

        results: dict[str, Any] = {}
        for loader, fn in self.loaders(name).items():
            before = fingerprint(self.live[name]) if loader == "restore" else None
            _reset_peak()
            base = _rss("VmRSS")
            signal.setitimer(signal.ITIMER_REAL, self.timeout)
            try:
                fn(path)
                outcome: Any = "ok"
            except CheckpointError:
                outcome = "CheckpointError"
            except Hang:
                outcome = "hang"
            except Exception as e:
                events, self.events = self.events, None  # formatting a traceback compiles source
                outcome = exception_record(e)
                self.events = events
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            results[loader] = {"outcome": outcome, "peak": max(0, _rss("VmHWM") - base)}
            if outcome == "hang" and before is not None:  # interrupted: no rollback ran, rebuild it
                self.live.pop(name)
            elif before is not None and outcome != "ok" and fingerprint(self.live[name]) != before:
                results[loader]["changed"] = True
                self.live.pop(name)  # rebuilt for the next case
        return results

    def case(self, i: int) -> dict[str, Any]:
        """Make case ``i`` (mutated from a seed chosen by ``--seed`` and ``i``) and load it every way."""
        from amber.checkpoint import write_checkpoint
        from amber.errors import CheckpointError

        rng = random.Random(f"{self.seed}/{i}")
        name = rng.choice(sorted(self.seeds))
        seed = self.seeds[name]
        trees = {"": copy.deepcopy(seed.state), **{f"policies/{p}": copy.deepcopy(c.state)
                                                   for p, c in seed.policies.items()}}
        path = self.work / f"case-{os.getpid()}"
        _rmtree(path)
        manifest = rng.random() < 0.2
        mutations = [] if manifest else [mutate_tree(trees, rng) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
        result: dict[str, Any] = {"case": i, "seed": name, "mutations": mutations}
        try:
            policies = {k.removeprefix("policies/"): v for k, v in trees.items() if k}
            write_checkpoint(path, type=seed.type, state=trees[""], policies=policies or None,
                             format="msgpack", metadata=seed.metadata,
                             checkpoint_version=seed.checkpoint_version)
        except CheckpointError as e:
            return {**result, "writer": f"refused: {type(e).__name__}"}
        except Exception as e:
            return {**result, "writer": exception_record(e)}
        if manifest:
            mutations.append(mutate_manifest(path, seed.type, rng))
        result["bytes"] = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        self.events = []
        try:
            result["loads"] = self.load_all(path, name)
        finally:
            result["audit"], self.events = self.events, None
        if self.marker.exists():
            result["audit"].append("the marker module ran")
            self.marker.unlink()
        return result


def fingerprint(algo: Any) -> str:
    """A digest of an algorithm's whole state (policies, components, running episodes)."""
    import hashlib
    import warnings

    h = hashlib.sha256()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _, v, path in slots(algo.get_state(), limit=10**6):
            h.update(path.encode() + (v.tobytes() + v.dtype.str.encode() if isinstance(v, np.ndarray) else
                                      repr(v).encode() if not isinstance(v, (dict, list)) else b""))
    return h.hexdigest()


def exception_record(e: BaseException) -> dict[str, Any]:
    """The exception's type, message, where it was raised, the innermost amber frame, its traceback."""
    frames = traceback.extract_tb(e.__traceback__)
    ours = [f for f in frames if f.filename.startswith((str(ROOT / "core"), str(ROOT / "plugins")))]

    def site(f: traceback.FrameSummary) -> str:
        return f"{Path(f.filename).relative_to(ROOT) if f in ours else Path(f.filename).name}:{f.name}"

    return {"type": type(e).__name__, "message": str(e)[:300], "raised": site(frames[-1]) if frames else "?",
            "amber": site(ours[-1]) if ours else "?",
            "traceback": "".join(traceback.format_exception(e, limit=-25))[-4000:]}


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        return next((int(line.split()[1]) * 1024 for line in f if line.startswith(field)), 0)


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- the driver


def run_worker(args: argparse.Namespace) -> None:
    """``--worker``: build the loaders, then write one JSON line per case (and ``start`` lines)."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed goes to stderr
    signal.signal(signal.SIGALRM, _hang)
    worker = Worker(Path(args.work), args.seed, args.case_timeout)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _rss("VmSize") + args.mem_cap_mb * 2**20  # beyond: MemoryError, not the machine's death
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    out.write(json.dumps({"ready": True}) + "\n")
    for i in range(args.first, args.cases, args.step):
        out.write(json.dumps({"start": i}) + "\n")
        out.write(json.dumps(worker.case(i), default=repr) + "\n")


def _hang(signum: int, frame: Any) -> None:
    raise Hang


class Pool:
    """Worker processes, each given every ``step``-th case; one killed past its deadline is replaced."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.lines: queue.Queue[tuple[int, int, str]] = queue.Queue()
        self.procs: dict[int, tuple[int, subprocess.Popen[str]]] = {}
        self.current: dict[int, tuple[int | None, float]] = {}
        self.results: list[dict[str, Any]] = []
        self.lost: list[dict[str, Any]] = []  # cases whose worker hung hard or died

    def spawn(self, w: int, first: int) -> None:
        cmd = [sys.executable, __file__, "--worker", "--work", str(self.work), "--seed", str(self.args.seed),
               "--first", str(first), "--step", str(self.args.workers), "--cases", str(self.args.cases),
               "--case-timeout", str(self.args.case_timeout), "--mem-cap-mb", str(self.args.mem_cap_mb)]
        log = open(self.work / f"worker-{w}.log", "a")  # noqa: SIM115 - kept open by the child
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
        gen = self.procs[w][0] + 1 if w in self.procs else 0
        self.procs[w], self.current[w] = (gen, proc), (None, time.monotonic())
        threading.Thread(target=lambda: [self.lines.put((w, gen, line)) for line in proc.stdout]
                         + [self.lines.put((w, gen, ""))], daemon=True).start()

    def run(self, deadline: float) -> None:
        for w in range(self.args.workers):
            self.spawn(w, w)
        alive = set(self.procs)
        while alive:
            try:
                w, gen, line = self.lines.get(timeout=1)
            except queue.Empty:
                w, gen, line = -1, -1, ""
            if w in alive and gen == self.procs[w][0]:
                self.take(w, line, alive)
            for w in list(alive):
                case, since = self.current[w]
                if time.monotonic() > deadline:
                    self.procs[w][1].kill()
                    alive.discard(w)
                elif case is not None and time.monotonic() - since > self.args.case_timeout * 7 + 30:
                    self.lose(w, case, "hang (killed)", alive)

    def take(self, w: int, line: str, alive: set[int]) -> None:
        if not line:  # the worker exited
            case = self.current[w][0]
            if case is not None:
                self.lose(w, case, f"crash (exit {self.procs[w][1].wait()})", alive)
            else:
                alive.discard(w)
            return
        msg = json.loads(line)
        if "start" in msg:
            self.current[w] = (msg["start"], time.monotonic())
        elif "case" in msg:
            self.results.append(msg)
            self.current[w] = (None, time.monotonic())

    def lose(self, w: int, case: int, why: str, alive: set[int]) -> None:
        self.procs[w][1].kill()
        self.lost.append({"case": case, "why": why})
        if case + self.args.workers < self.args.cases:
            self.spawn(w, case + self.args.workers)
        else:
            alive.discard(w)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=1e9, help="stop after this long")
    ap.add_argument("--case-timeout", type=float, default=20.0, help="seconds per load")
    ap.add_argument("--mem-cap-mb", type=int, default=4096, help="address space a worker may add (RLIMIT_AS)")
    ap.add_argument("--mem-bound-mb", type=float, default=64, help="report loads whose peak grew more")
    ap.add_argument("--json", help="write the summary there")
    ap.add_argument("--tracebacks", type=int, default=3)
    ap.add_argument("--workdir", default="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--build", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--step", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:
        build_seeds(Path(args.build))
        return 0
    if args.worker:
        run_worker(args)
        return 0
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="amber-fuzz-", dir=args.workdir) as tmp:
        work = Path(tmp)
        (work / "hostile").mkdir()
        (work / "hostile" / "fuzz_marker.py").write_text(MARKER_MODULE)
        subprocess.run([sys.executable, __file__, "--build", str(work / "seeds")], check=True, cwd=ROOT)
        pool = Pool(args, work)
        pool.run(start + args.seconds)
        summary = summarize(pool.results, pool.lost, args.mem_bound_mb)
    report(summary, time.monotonic() - start, args.tracebacks)
    if args.json:
        summary = {"command": sys.argv, "seconds": round(time.monotonic() - start), **summary}
        Path(args.json).write_text(json.dumps(summary,
                                              indent=1, default=repr))
    bad = summary["hangs"] or summary["lost"] or summary["audit"] or summary["restore_changed_algorithm"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
