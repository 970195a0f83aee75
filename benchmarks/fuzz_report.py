"""The summary and the printed report of benchmarks/fuzz_checkpoints.py."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from typing import Any

#: The prefix of an audit event under gymnasium's ``make`` of a registered id (the env's entry point).
REGISTERED_ENV = "[registered gymnasium env] "


def _outcome(o: Any, stage: str) -> str:
    if stage == "writer":
        return "writer exception" if isinstance(o, dict) else "writer refused"
    return "other exception" if isinstance(o, dict) else o


def _kind(kinds: dict[str, dict[str, Any]], r: dict[str, Any], stage: str, o: dict[str, Any]) -> None:
    key = f"{o['type']} at {o['amber']} (raised in {o['raised']})"
    kind = kinds.setdefault(key, {"count": 0, "stages": Counter(), "example": {
        "case": r["case"], "seed": r["seed"], "mutations": r["mutations"], "stage": stage,
        "message": o["message"], "traceback": o["traceback"]}})
    kind["count"] += 1
    kind["stages"][stage] += 1


def summarize(
    results: list[dict[str, Any]], lost: list[dict[str, Any]], mem_bound_mb: float
) -> dict[str, Any]:
    """Counts, exception kinds by site (with a first example), audit events, memory per input byte."""
    outcomes: Counter[str] = Counter()
    kinds: dict[str, dict[str, Any]] = {}
    audit, registered, changed, memory, hangs = [], [], [], [], []
    for r in results:
        stages = {"writer": {"outcome": r["writer"]}} if "writer" in r else r.get("loads", {})
        for stage, got in stages.items():
            outcomes[_outcome(got["outcome"], stage)] += 1
            if isinstance(got["outcome"], dict):
                _kind(kinds, r, stage, got["outcome"])
            if got["outcome"] == "hang":
                hangs.append({"case": r["case"], "stage": stage, "mutations": r["mutations"]})
            if got.get("changed"):
                changed.append({"case": r["case"], "mutations": r["mutations"]})
            if "peak" in got and r.get("bytes"):
                memory.append((got["peak"], got["peak"] / r["bytes"], r["case"], stage, r["mutations"]))
        entry = {"case": r["case"], "seed": r["seed"], "mutations": r["mutations"], "events": r.get("audit")}
        if r.get("audit"):
            own = all(e.startswith(REGISTERED_ENV) for e in r["audit"])
            (registered if own else audit).append(entry)
    memory.sort(key=lambda m: m[0], reverse=True)
    over = [m for m in memory if m[0] > mem_bound_mb * 2**20]
    loads = sum(n for k, n in outcomes.items() if not k.startswith("writer"))
    return {"cases": len(results) + len(lost), "loads": loads,
            "outcomes": dict(outcomes), "hangs": hangs, "lost": lost,
            "exception_kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1]["count"])),
            "audit": audit, "audit_registered_envs": registered, "restore_changed_algorithm": changed,
            "peak_bytes_max": memory[0][0] if memory else 0,
            "peak_per_input_byte_max": max((m[1] for m in memory), default=0.0),
            "peak_per_input_byte_median": statistics.median(m[1] for m in memory) if memory else 0.0,
            "memory_bound_mb": mem_bound_mb,
            "over_memory_bound": [{"peak_mb": round(m[0] / 2**20, 1), "per_byte": round(m[1], 1),
                                   "case": m[2], "stage": m[3], "mutations": m[4]} for m in over]}


def report(s: dict[str, Any], elapsed: float, tracebacks: int) -> None:
    """Print the summary: a markdown table, then each exception kind, audit event, hang and peak."""
    o = s["outcomes"]
    print("| cases | loads | ok | CheckpointError | other exceptions | writer refused | writer exceptions "
          "| hangs | hung or died "
          "| audit events | imports of registered gym envs | failed restore() changed the algorithm "
          f"| max peak MB | peak per input byte (median, max) | loads over {s['memory_bound_mb']:g} MB |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
          f"| {s['cases']} | {s['loads']} | {o.get('ok', 0)} | {o.get('CheckpointError', 0)} "
          f"| {o.get('other exception', 0)} | {o.get('writer refused', 0)} | {o.get('writer exception', 0)} "
          f"| {len(s['hangs'])} "
          f"| {len(s['lost'])} "
          f"| {len(s['audit'])} | {len(s['audit_registered_envs'])} | {len(s['restore_changed_algorithm'])} "
          f"| {s['peak_bytes_max'] / 2**20:.1f} | {s['peak_per_input_byte_median']:.2f}, "
          f"{s['peak_per_input_byte_max']:.0f} | {len(s['over_memory_bound'])} |")
    print(f"\n{elapsed:.0f} s. Exceptions other than CheckpointError, by kind (count: type at amber's "
          "innermost frame, raised in):")
    for i, (key, kind) in enumerate(s["exception_kinds"].items()):
        ex = kind["example"]
        print(f"- {kind['count']}: {key}; by {dict(kind['stages'])}\n  e.g. case {ex['case']} ({ex['seed']}, "
              f"{ex['stage']}): {ex['mutations']}: {ex['message'][:200]}")
        if i < tracebacks:
            print("    " + ex["traceback"].replace("\n", "\n    ")[-2500:])
    for title, items in (("Audit events", s["audit"]), ("Hangs", s["hangs"]), ("Hung or died", s["lost"]),
                         ("Imports of registered gymnasium envs", s["audit_registered_envs"]),
                         ("Failed restore() that changed the algorithm", s["restore_changed_algorithm"]),
                         ("Loads over the memory bound", s["over_memory_bound"])):
        if items:
            print(f"\n{title}:\n" + "\n".join(f"- {json.dumps(x, default=repr)[:600]}" for x in items[:20]))
