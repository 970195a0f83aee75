"""docs/rllib_compat.md's "Defaults that differ" table is true on both sides: amber's column is
what amber's configs hold, and RLlib's column is what RLlib 2.10's own checkpoints record (the
fixtures were written by RLlib 2.10.0; their scripts override none of these settings)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import msgpack
import msgpack_numpy
import pytest

from amber.algorithms.dqn import DQNConfig
from amber.algorithms.ppo import PPOConfig
from amber.algorithms.sac import SACConfig

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "rllib-2.10"
CONFIGS = {"PPO": PPOConfig, "DQN": DQNConfig, "SAC": SACConfig}
#: (algorithm, amber setting) -> (RLlib fixture, how to read RLlib's value from its saved config);
#: None: the fixture's script sets this setting itself, so only RLlib's source tells its default.
RLLIB_VALUES = {
    ("PPO", "lr"): ("ppo_msgpack", lambda c: c["lr"]),
    ("PPO", "lambda_"): ("ppo_msgpack", lambda c: c["lambda"]),
    ("PPO", "clip_param"): ("ppo_msgpack", lambda c: c["clip_param"]),
    ("PPO", "num_env_runners"): None,
    ("DQN", 'model["fcnet_activation"]'): ("dqn_msgpack", lambda c: c["model"]["fcnet_activation"]),
    ("DQN", "hiddens"): ("dqn_msgpack", lambda c: c["hiddens"]),
    ("DQN", "epsilon"): ("dqn_msgpack", lambda c: c["exploration_config"]["final_epsilon"]),
    ("DQN", "rollout_fragment_length"): ("dqn_msgpack", lambda c: c["rollout_fragment_length"]),
    ("DQN", "replay_buffer_config"): ("dqn_msgpack", lambda c: c["replay_buffer_config"]["type"].rsplit(".")[-1]),
    ("SAC", "replay_buffer_config"): ("sac_msgpack", lambda c: c["replay_buffer_config"]["type"].rsplit(".")[-1]),
    ("SAC", "min_sample_timesteps_per_iteration"): None,
}


def table_rows() -> list[list[str]]:
    text = (ROOT / "docs" / "rllib_compat.md").read_text()
    section = text.split("## Defaults that differ", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip().strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[2:]]  # (the header and its rule)


def literal(cell: str) -> object:
    """The first `...` of a cell, as a Python literal."""
    return ast.literal_eval(re.search(r"`([^`]*)`", cell).group(1))


def amber_value(config: object, setting: str) -> object:
    name, *keys = re.findall(r'^\w+|(?<=\[")[^"]+(?="\])', setting)
    value = getattr(config, name)
    for key in keys:
        value = value[key]
    return value


def rllib_config(fixture: str) -> dict:
    data = (FIXTURES / fixture / "algorithm_state.msgpck").read_bytes()
    return msgpack.unpackb(data, object_hook=msgpack_numpy.decode, strict_map_key=False)["config"]


def test_the_table_lists_each_checked_setting_once():
    keys = [(row[0], row[1].strip("`")) for row in table_rows()]
    assert sorted(keys) == sorted(RLLIB_VALUES)


@pytest.mark.parametrize("row", table_rows(), ids=lambda row: f"{row[0]}-{row[1]}")
def test_each_row_is_amber_s_default_and_rllib_s(row):
    algo, setting, ours, theirs, _ = row
    setting = setting.strip("`")
    assert amber_value(CONFIGS[algo](), setting) == literal(ours)
    assert literal(ours) != literal(theirs)
    source = RLLIB_VALUES[(algo, setting)]
    if source is not None:
        fixture, read = source
        assert read(rllib_config(fixture)) == literal(theirs)


def test_the_fixes_in_the_last_column_give_rllib_s_values():
    """The calls the table gives set what it says (checked on a few, by building the configs)."""
    ppo = PPOConfig().training(lr=5e-5, lambda_=1.0, clip_param=0.3)
    assert (ppo.lr, ppo.lambda_, ppo.clip_param) == (5e-5, 1.0, 0.3)
    dqn = (DQNConfig().training(model={"fcnet_activation": "tanh"}, hiddens=[256],
                                epsilon=[(0, 1.0), (10000, 0.02)])
           .env_runners(rollout_fragment_length=1))
    assert dqn.model["fcnet_hiddens"] == [256, 256]  # merged: only the activation changes
    assert (dqn.model["fcnet_activation"], dqn.hiddens, dqn.epsilon[-1], dqn.rollout_fragment_length) == (
        "tanh", [256], (10000, 0.02), 1)
    assert SACConfig().reporting(min_sample_timesteps_per_iteration=100).min_sample_timesteps_per_iteration == 100
