"""A tf2 algorithm never imports torch (api.md section 1: "torch is imported only when a torch
policy is built").

Building a PPO, DQN or SAC with ``.framework("tf2")`` imported torch: the default policy class was
found as the torch one and then mapped to tf2, the tf2 policies and learners took constants and
helpers from the torch modules, and the algorithm seeded and saved torch's generator. Each
workflow runs here in a fresh process that notes the first import of torch and where it came
from. The default policy class is now chosen for the config's framework, also in RLlib's
classmethod form (``PPO.get_default_policy_class(config)``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("keras")

#: Run in a child: notes the first import of torch (the step and the stack), then does ``BODY``.
PRELUDE = textwrap.dedent("""
    import importlib.abc, json, os, sys, tempfile, traceback, warnings
    warnings.filterwarnings("ignore")
    STEP = ["importing amber"]

    class Watch(importlib.abc.MetaPathFinder):
        first = None

        def find_spec(self, name, path=None, target=None):
            if name == "torch" and Watch.first is None:
                Watch.first = STEP[0] + ":\\n" + "".join(traceback.format_stack(limit=10)[:-1])
            return None

    sys.meta_path.insert(0, Watch())
    import amber
    from amber.policy.policy import Policy
    out = {}
""")

WORKFLOW = textwrap.dedent("""
    from amber.algorithms.dqn import DQN, DQNConfig
    from amber.algorithms.ppo import PPO, PPOConfig
    from amber.algorithms.sac import SAC, SACConfig

    name = sys.argv[1]
    cls, config = {
        "ppo": (PPO, PPOConfig().environment("CartPole-v1")
                .training(train_batch_size=64, minibatch_size=32, num_epochs=1)),
        "dqn": (DQN, DQNConfig().environment("CartPole-v1")
                .training(train_batch_size=16, num_steps_sampled_before_learning_starts=16)
                .reporting(min_sample_timesteps_per_iteration=32)),
        "sac": (SAC, SACConfig().environment("Pendulum-v1")
                .training(train_batch_size=16, num_steps_sampled_before_learning_starts=16)
                .reporting(min_sample_timesteps_per_iteration=32)),
    }[name]
    config = (config.framework("tf2").training(model={"fcnet_hiddens": [8]}).debugging(seed=0)
              .reporting(log_results=False))
    mapping = lambda agent_id, *args, **kwargs: "p0"
    root = tempfile.mkdtemp()
    for multi in (False, True):
        pid = "p0" if multi else "default_policy"
        cfg = config.copy().multi_agent(policies={"p0", "p1"}, policy_mapping_fn=mapping) if multi else config
        run = os.path.join(root, str(multi))
        STEP[0] = "build"; algo = cfg.build()
        STEP[0] = "train"; out[f"learned {multi}"] = bool(algo.train()["info"]["learner"])
        STEP[0] = "save"; algo.save(run + "/pickle")
        STEP[0] = "save msgpack in the background"
        algo.save(run + "/msgpack", format="msgpack", block=False).result()
        policy = algo.get_policy(pid)
        STEP[0] = "compute_single_action"; policy.compute_single_action(policy.observation_space.sample())
        STEP[0] = "export_model"; policy.export_model(run + "/export")
        STEP[0] = "stop"; algo.stop()
        STEP[0] = "from_checkpoint"; again = cls.from_checkpoint(run + "/pickle")
        STEP[0] = "train restored"; again.train()
        STEP[0] = "restore msgpack"; again.restore(run + "/msgpack")
        STEP[0] = "add_policy"; again.add_policy("extra")
        STEP[0] = "train with the added policy"; again.train()
        again.stop()
        for fmt in ("pickle", "msgpack"):
            STEP[0] = f"Policy.from_checkpoint {fmt}"
            served = Policy.from_checkpoint(f"{run}/{fmt}/policies/{pid}")
            served.compute_single_action(served.observation_space.sample())
            out[f"class {multi} {fmt}"] = type(served).__name__
""")

#: Restores the checkpoints of ``argv[1:]``, trains each once: their policies' weights after it.
RESTORE = textwrap.dedent("""
    import numpy as np
    from amber.algorithms.algorithm import Algorithm

    weights = []
    for path in sys.argv[1:]:
        STEP[0] = f"from_checkpoint {os.path.basename(path)}"
        algo = Algorithm.from_checkpoint(path)
        STEP[0] = f"train {os.path.basename(path)}"
        algo.train()
        weights.append(algo.get_policy().get_weights())
        algo.stop()
    out["same"] = all(np.array_equal(weights[0][k], w[k]) for w in weights[1:] for k in weights[0])
""")

EPILOGUE = 'out["torch"] = Watch.first or ("torch" in sys.modules)\nprint(json.dumps(out))\n'


def _child(body: str, *args: str) -> dict:
    """Run ``body`` in a fresh interpreter; its ``out`` with ``torch``: False, or where torch came from."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", PRELUDE + body + EPILOGUE, *args], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name, policy_class", [("ppo", "PPOTFPolicy"), ("dqn", "DQNTFPolicy"),
                                                ("sac", "SACTFPolicy")])
def test_a_tf2_algorithm_trains_saves_restores_and_serves_without_importing_torch(name, policy_class):
    out = _child(WORKFLOW, name)
    torch = out.pop("torch")
    assert torch is False, f"a tf2 {name} imported torch, at {torch}"
    assert out == {"learned False": True, "learned True": True,
                   **{f"class {multi} {fmt}": policy_class for multi in (False, True)
                      for fmt in ("pickle", "msgpack")}}


def test_a_tf2_checkpoint_that_holds_torchs_generator_restores_without_torch(tmp_path):
    """Checkpoints of earlier tf2 algorithms hold ``rng.torch``: it is ignored (and not imported)."""
    from amber.algorithms.ppo import PPOConfig
    from amber.algorithms.training_state import TorchGlobalRNG
    from amber.checkpoint_read import read_checkpoint

    algo = (PPOConfig().environment("CartPole-v1").framework("tf2").debugging(seed=3)
            .training(model={"fcnet_hiddens": [8]}, train_batch_size=64, minibatch_size=32, num_epochs=1)
            .reporting(log_results=False).build())
    algo.train()
    algo.save(tmp_path / "now")
    components = algo.checkpoint_components
    algo.checkpoint_components = lambda: {**components(), "rng.torch": TorchGlobalRNG()}  # as before
    algo.save(tmp_path / "earlier")
    algo.stop()
    assert "rng.torch" in read_checkpoint(tmp_path / "earlier").state["components"]
    assert "rng.torch" not in read_checkpoint(tmp_path / "now").state["components"]

    out = _child(RESTORE, str(tmp_path / "now"), str(tmp_path / "earlier"))
    assert out == {"same": True, "torch": False}


def test_the_default_policy_class_is_the_configs_frameworks():
    """RLlib's ``get_default_policy_class(config)``: on the class or an algorithm, any framework."""
    from amber.algorithms.dqn import DQN, DQNConfig
    from amber.algorithms.dqn.dqn_tf_policy import DQNTFPolicy
    from amber.algorithms.ppo import PPO, PPOConfig
    from amber.algorithms.sac import SAC, SACConfig
    from amber.algorithms.sac.sac_tf_policy import SACTFPolicy
    from amber.policy.tf_policy import PPOTFPolicy

    for algo_cls, config_cls, tf2 in ((PPO, PPOConfig, PPOTFPolicy), (DQN, DQNConfig, DQNTFPolicy),
                                      (SAC, SACConfig, SACTFPolicy)):
        assert algo_cls.get_default_policy_class(config_cls().framework("tf2")) is tf2
        assert algo_cls.get_default_policy_class({"framework": "tf2"}) is tf2  # an RLlib config dict
        torch_cls = algo_cls.get_default_policy_class(config_cls())
        assert torch_cls.__name__.endswith("TorchPolicy") and torch_cls.__module__.startswith("amber.")


def test_an_algorithm_tells_its_own_frameworks_default_policy_class():
    from amber.algorithms.ppo import PPOConfig
    from amber.policy.tf_policy import PPOTFPolicy
    from amber.policy.torch_policy import TorchPolicy

    config = PPOConfig().environment("CartPole-v1").training(model={"fcnet_hiddens": [8]})
    for framework, expected in (("tf2", PPOTFPolicy), ("torch", TorchPolicy)):
        algo = config.copy().framework(framework).build()
        assert algo.get_default_policy_class() is expected
        assert type(algo.get_policy()) is expected
        algo.stop()


def test_an_override_of_the_default_policy_class_in_rllibs_form_or_amber_s_is_built():
    from amber.algorithms.ppo import PPO, PPOConfig
    from amber.policy.torch_policy import TorchPolicy

    class Mine(TorchPolicy):
        pass

    class RLlibStyle(PPO):
        @classmethod
        def get_default_policy_class(cls, config):
            return Mine if config["framework"] == "torch" else None

    class AmberStyle(PPO):
        def get_default_policy_class(self):
            return Mine

    for algo_cls in (RLlibStyle, AmberStyle):
        algo = algo_cls(PPOConfig().environment("CartPole-v1").training(model={"fcnet_hiddens": [8]}))
        assert type(algo.get_policy()) is Mine
        algo.stop()


def test_a_torch_algorithm_still_saves_and_seeds_torchs_generator(tmp_path):
    from amber.algorithms.ppo import PPOConfig
    from amber.checkpoint_read import read_checkpoint

    algo = PPOConfig().environment("CartPole-v1").training(model={"fcnet_hiddens": [8]}).build()
    algo.save(tmp_path / "ck")
    algo.stop()
    saved = read_checkpoint(tmp_path / "ck").state["components"]["rng.torch"]
    assert isinstance(saved, np.ndarray) and saved.dtype == np.uint8


def test_importing_the_framework_free_modules_imports_neither_torch_nor_tensorflow():
    body = textwrap.dedent("""
        import amber.algorithms.dqn.dqn_common, amber.algorithms.ppo.ppo_common
        import amber.algorithms.sac.sac_common, amber.policy.policy_helpers, amber.policy.frameworks
        import amber.algorithms.dqn, amber.algorithms.ppo, amber.algorithms.sac
        out["tensorflow"] = "tensorflow" in sys.modules
    """)
    assert _child(body) == {"tensorflow": False, "torch": False}


def test_the_torch_modules_still_offer_the_names_moved_out_of_them():
    from amber.algorithms.dqn import dqn_common, dqn_learner, dqn_torch_policy
    from amber.algorithms.ppo import ppo_common, ppo_learner
    from amber.algorithms.sac import sac_common, sac_learner, sac_torch_policy
    from amber.policy import policy_helpers, torch_utils

    moved = [(dqn_torch_policy, dqn_common, ("epsilon_at", "validate_epsilon_schedule", "dqn_epsilon_schedule")),
             (dqn_learner, dqn_common, ("nstep_transitions", "REPLAY_COLUMNS")),
             (ppo_learner, ppo_common, ("compute_gae", "discount_cumsum", "explained_variance",
                                        "postprocess_fragments", "update_kl_coeff")),
             (sac_torch_policy, sac_common, ("LOG_STD_MAX", "LOG_STD_MIN", "SAC_MODEL_DEFAULTS")),
             (sac_learner, sac_common, ("STAT_NAMES",)),
             (torch_utils, policy_helpers, ("policy_seeds", "state_views", "portable_config",
                                            "build_from_spec", "action_info"))]
    for old, new, names in moved:
        for name in names:
            assert getattr(old, name) is getattr(new, name), (old.__name__, name)


def test_policy_seeds_are_fresh_without_a_seed_and_fixed_with_one():
    from amber.policy.policy_helpers import policy_seeds

    assert policy_seeds(7, 3, salt=(1,)) == policy_seeds(7, 3, salt=(1,)) != policy_seeds(7, 3)
    assert policy_seeds(None, 2) != policy_seeds(None, 2)
    assert all(0 <= s < 2**64 for s in policy_seeds(None, 4)) and len(policy_seeds(None, 4)) == 4


