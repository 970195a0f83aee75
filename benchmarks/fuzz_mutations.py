"""The mutations of benchmarks/fuzz_checkpoints.py, and the checkpoints it starts from.

:func:`mutate_tree` changes one value of a decoded state tree (keys deleted, duplicated or
renamed; types changed; extreme numbers; arrays of the wrong shape, dtype or size; huge
declared sizes and unknown kinds at the keys that declare them; unregistered names and
placeholders); :func:`mutate_manifest` edits a written checkpoint's manifest and recomputes
its digest and its parent's entry for it, so the integrity checks pass and deeper layers are
reached.
"""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
NAN, INF = math.nan, math.inf
ODD = ["", " ", "..", "../x", "a/b", "\x00", "\n", "é", "\u202e", "\ud800", "x" * 5000, "__class__", "step",
       "default_policy", 7, -1, 2**63 - 1]
NUMBERS = [0, -1, -(2**63), 2**63 - 1, 2**64 - 1, 10**12, True, 1.5, -0.0, NAN, INF, -INF, 1e308]
REFS = ["os:system", "builtins:eval", "subprocess:Popen", "amber.PPOX", "amber.DQN", "amber.SAC",
        "amber.PPOConfig", "amber.TorchPolicy", "?lambda", "?", "", "fuzz_marker:Env", "fuzz_marker",
        "user:nope", "gymnasium:CartPole-v1", "gymnasium:os", "amber.MultiAgentCartPole"]
BOX = {"type": "Box", "low": np.zeros(10**5, np.float32), "high": np.ones(10**5, np.float32), "dtype": "<f4"}
TARGETS: dict[str, list[Any]] = {  # a key anywhere in a tree -> values worth trying there
    "fcnet_hiddens": [[10**6, 10**6], [4096, 4096], [], [0], [-1], ["8"], 10**6],
    "hiddens": [[10**6], [-1]], "train_batch_size": [10**12, 0, -1], "minibatch_size": [10**9, 0],
    "num_epochs": [10**9, -1], "num_envs_per_env_runner": [10**6, 0, -3], "capacity": [10**12, 0, -1],
    "size": [10**9, -1], "cursor": [10**9, -1], "num_added": [-1], "n_step": [10**6, 0],
    "env": ["Pendulum-v1", "MountainCar-v0", "fuzz_marker:Env-v0", "os:system", "LunarLander-v3", ""],
    "env_config": [{"num_agents": 10**6}, {"num_agents": 0}, {"render_mode": "human"}, {"g": "x"}],
    "n": [10**12, 0, -1], "num_agents": [10**6, -1], "start": [2**63 - 1],
    "observation_space": [{"type": "Discrete", "n": 10**12}, BOX, {"type": "Dict"}, {"type": "os.system"}],
    "action_space": [{"type": "Discrete", "n": 10**9}, {**BOX, "dtype": "<U8"}, {"type": "Box"}],
    "bit_generator": ["test", "os.system", "MT19937", "PCG64DXSM", "default_rng", "__import__"],
    "dtype": ["object", "<U8", "V8", "os.system", "|O", ">f8"], "kind": ["Pendulum", "MountainCar", "x"],
    "type": ["Box", "Discrete", "Tuple", "x"], "global_timestep": [-1, 2**63 - 1],
    "iteration": [-1, 2**63 - 1],
    "seed": [-1, 2**63 - 1, "x"], "lr": [-1.0, NAN], "gamma": [NAN, 1e308], "next_eps_id": [-1, "x"],
    "num_envs": [10**6, 0], "mapping": [{0: "../x"}, {0: "nope"}], "epsilon": [[[0, NAN]], [], "x"],
    "policies": [{"../x": None}, {"p": {"policy_class": "os:system"}}, []],
    "policies_to_train": [["nope"], "x"],
}
MANIFEST_EDITS: dict[str, list[Any]] = {
    "checkpoint_version": ["1.0", "2.0", "0.9", "3.0", "", "2.1.0", 21, None], "type": ["Policy", "Algorithm",
    "State", "Model", 1], "format": ["pickle", "npz", "json", "", "MSGPACK"], "policy_ids": [[], ["nope"],
    ["../x"], "default_policy", [1], None], "state_file": ["policy_state.msgpck", "algorithm_state.msgpck",
    "state.msgpck", "../x", "checkpoint.json", 1], "metadata": [{"a": 1}, [], None, {"a": "\u202e"}],
    "created": [1, None, "x" * 10000], "format_plugin": [None, 1, {"name": 1}], "amber_version": ["99.0", 1],
    "policy_id": ["../x", 1, "nope"], "extra": [1],
}
FILE_EDITS = [("size", -1), ("size", 2**70), ("size", "1"), ("size", True), ("size", 0),
              ("digest", "xxh3_128:0"), ("digest", "sha256:" + "0" * 64), ("digest", "md5:x"),
              ("digest", None)]
MARKER_MODULE = "import pathlib, os\npathlib.Path(os.environ['FUZZ_MARKER']).write_text('imported')\n"


def fuzz_mapping(agent_id: Any, episode: Any = None, worker: Any = None, **kw: Any) -> str:
    """The multi-agent seed's mapping: agent 0 to p0, the others to p1."""
    return "p0" if agent_id == 0 else "p1"


def register_names() -> None:
    """Register the mapping functions the seeds name: this one, and the frozen fixtures' (as the tests do)."""
    import amber

    amber.register_class(fuzz_mapping, name="fuzz.mapping")
    try:
        from tests.fixtures.fixture_fns import policy_for_agent

        amber.register_class(policy_for_agent)
    except ImportError:
        pass


# --------------------------------------------------------------------------- seeds


def build_seeds(out: Path) -> None:
    """Write the fuzzed checkpoints: trained one iteration each, tiny networks, msgpack."""
    import random as pyrandom

    import amber
    from amber import components
    from amber.algorithms.dqn import DQNConfig
    from amber.algorithms.ppo import PPOConfig
    from amber.envs import MultiAgentCartPole

    register_names()
    small = {"train_batch_size": 64, "minibatch_size": 32, "num_epochs": 1, "model": {"fcnet_hiddens": [8]}}
    ppo = PPOConfig().environment("CartPole-v1").training(**small).debugging(seed=0).build()
    multi = (PPOConfig().environment(MultiAgentCartPole, env_config={"num_agents": 2}).training(**small)
             .debugging(seed=1).multi_agent(policies={"p0", "p1"}, policy_mapping_fn=fuzz_mapping).build())
    pendulum = PPOConfig().environment("Pendulum-v1").training(**small).debugging(seed=2).build()
    dqn = (DQNConfig().environment("CartPole-v1").debugging(seed=3)
           .reporting(min_sample_timesteps_per_iteration=64).checkpointing(store_replay_buffer=True)
           .training(model={"fcnet_hiddens": [8]}, replay_buffer_config={"capacity": 200}, n_step=2,
                     num_steps_sampled_before_learning_starts=32).build())
    for name, algo in (("ppo", ppo), ("ppo_multi", multi), ("ppo_pendulum", pendulum), ("dqn", dqn)):
        algo.train()
        algo.save(out / name, format="msgpack")
        algo.stop()
    ppo.get_policy().export_checkpoint(out / "policy", format="msgpack")
    rngs = {"np": np.random.default_rng(1), "mt": np.random.Generator(np.random.MT19937(2)),
            "py": pyrandom.Random(3), "legacy": np.random.RandomState(4)}
    state = {"weights": {"w": np.arange(12.0).reshape(3, 4), "b": np.ones(3, np.float32)}, "step": 7,
             "names": ["a", "b"], "nested": {"x": {"y": [1, 2.5, None, True]}}, "blob": b"\x00\x01",
             "rng": components.capture(None, rngs)}
    amber.save(state, out / "state", format="msgpack")


def seed_paths(work: Path) -> dict[str, Path]:
    """Every seed checkpoint by name: those built here and the frozen msgpack fixtures."""
    found = {p.name: p for p in sorted((work / "seeds").iterdir())}
    for p in sorted((ROOT / "tests" / "fixtures" / "checkpoints").glob("*/*_msgpack")):
        found[f"{p.parent.name}/{p.name}"] = p
    return found


# --------------------------------------------------------------------------- mutations


def slots(tree: Any, limit: int = 4000) -> list[tuple[Any, Any, str]]:
    """(container, key, path) of every value in ``tree``, breadth first, at most ``limit``."""
    out: list[tuple[Any, Any, str]] = []
    pending = [(tree, "")]
    while pending and len(out) < limit:
        node, path = pending.pop(0)
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in list(items):
            out.append((node, k, f"{path}/{k!r}"[:120]))
            if isinstance(v, (dict, list)):
                pending.append((v, f"{path}/{k!r}"))
    return out


def bad_array(a: Any, rng: random.Random) -> np.ndarray:
    """``a`` (an array, or a new one) with the wrong size, shape, dtype or values."""
    a = np.asarray(a) if isinstance(a, np.ndarray) else np.arange(6.0).reshape(2, 3)
    flat = a.reshape(-1)
    return rng.choice([
        lambda: flat[: max(0, flat.size - 1)], lambda: np.concatenate([flat, flat[:1]]), lambda: flat,
        lambda: a.T.copy() if a.ndim > 1 else flat.reshape(1, -1),
        lambda: a.astype(rng.choice(["float64", "int8", "bool", "complex64", "uint64", ">f4", "float16"])),
        lambda: np.zeros((0, *a.shape[1:]), a.dtype), lambda: np.array(flat[0] if flat.size else 0),
        lambda: np.full(a.shape, rng.choice([NAN, INF, -INF, 1e30])), lambda: np.zeros((10**6,), np.uint8),
    ])()


def retyped(v: Any, rng: random.Random) -> Any:
    """``v`` as another type: int <-> str <-> list <-> dict <-> None and others."""
    options = [None, 0, -1, "x", str(v)[:50], [v], {"k": v}, True, 1.5, np.zeros(3)]
    if isinstance(v, dict):
        options += [list(v.values()), list(v.keys())]
    if isinstance(v, list):
        options += [{str(i): x for i, x in enumerate(v)}]
    if isinstance(v, str):
        options += [len(v), v.encode()[:50]]
    return rng.choice(options)


def mutate_tree(trees: dict[str, Any], rng: random.Random) -> str:
    """Apply one mutation to one of ``trees`` (by level: "" or "policies/<id>"); describe it."""
    where = rng.choice(sorted(trees))
    spots = slots(trees[where])
    op = rng.choices(["target", "delete", "duplicate", "rename", "retype", "number", "array", "ref", "root"],
                     [30, 12, 6, 10, 14, 10, 10, 6, 2])[0]
    targeted = [s for s in spots if isinstance(s[1], str) and s[1] in TARGETS]
    if op == "root" or not spots:
        trees[where] = rng.choice([None, [], "x", 0, {}])
        return f"{where or 'top'}: whole tree = {trees[where]!r}"
    parent, key, path = rng.choice(targeted) if op == "target" and targeted else rng.choice(spots)
    value = parent[key]
    if op == "target" and targeted:
        parent[key] = copy.deepcopy(rng.choice(TARGETS[key]))
    elif op == "delete":
        del parent[key]
        return f"{where or 'top'}{path}: deleted"
    elif op == "duplicate":
        if isinstance(parent, list):
            parent.insert(key, copy.deepcopy(value))
        else:
            parent[rng.choice([f"{key}_dup", *parent])] = copy.deepcopy(value)
        return f"{where or 'top'}{path}: duplicated"
    elif op == "rename" and isinstance(parent, dict):
        new = rng.choice(ODD)
        parent[new] = parent.pop(key)
        return f"{where or 'top'}{path}: renamed to {new!r}"[:200]
    elif op == "number":
        parent[key] = rng.choice(NUMBERS)
    elif op == "array":
        parent[key] = bad_array(value, rng)
    elif op == "ref":
        from amber.state import Ref

        parent[key] = Ref(rng.choice(REFS))
    else:
        parent[key] = retyped(value, rng)
    return f"{where or 'top'}{path}: {op} -> {_short(parent[key])}"


def _short(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return f"array{v.shape} {v.dtype.str}"
    return repr(v)[:80]


def mutate_manifest(case: Path, seed_type: str, rng: random.Random) -> str:
    """Edit one manifest of a written case; recompute its digest and its parent's entry for it."""
    from amber.digest import hash_file
    from amber.layout import MANIFEST, SELF_DIGEST, _self_digest

    policies = sorted((case / "policies").glob("*")) if seed_type == "Algorithm" else []
    levels = ["", *(f"policies/{p.name}" for p in policies)]
    level = rng.choice(levels)
    path = case / level / MANIFEST
    raw = json.loads(path.read_text())
    raw.pop(SELF_DIGEST)
    if rng.random() < 0.3 and raw.get("files"):
        rel = rng.choice(sorted(raw["files"]))
        edit = rng.choice([*FILE_EDITS, ("delete", None), ("add", "../x"), ("add", "extra.bin")])
        if edit[0] == "delete":
            del raw["files"][rel]
        elif edit[0] == "add":
            raw["files"][edit[1]] = {"size": 0, "digest": raw["files"][rel]["digest"]}
        else:
            raw["files"][rel][edit[0]] = edit[1]
        what = f"files[{rel!r}] {edit[0]} {edit[1]!r}"[:120]
    else:
        key = rng.choice([*MANIFEST_EDITS, "(delete)"])
        if key == "(delete)":
            key = rng.choice(sorted(raw))
            del raw[key]
            what = f"{key} deleted"
        else:
            raw[key] = rng.choice(MANIFEST_EDITS[key])
            what = f"{key} = {raw[key]!r}"[:120]
    raw[SELF_DIGEST] = _self_digest(raw)
    path.write_text(json.dumps(raw))
    if level:
        top = json.loads((case / MANIFEST).read_text())
        top.pop(SELF_DIGEST)
        size, digest = hash_file(path)
        top["files"][f"{level}/{MANIFEST}"] = {"size": size, "digest": digest}
        top[SELF_DIGEST] = _self_digest(top)
        (case / MANIFEST).write_text(json.dumps(top))
    return f"manifest {level or 'top'}: {what}"
