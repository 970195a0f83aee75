"""Column names of sampled batches, and the default policy id (RLlib's ``ray.rllib.policy.sample_batch``).

A batch is a ``dict[str, np.ndarray]`` of equal-length columns. Every column
name amber uses is defined here, once; so are the column sets each stage
keeps (what the env runner records, what off-policy replay stores, what
DQN's n-step rows hold).
"""

from __future__ import annotations

__all__ = [
    "ACTIONS",
    "ACTION_DIST_INPUTS",
    "ACTION_LOGP",
    "ADVANTAGES",
    "AGENT_INDEX",
    "DEFAULT_POLICY_ID",
    "DISCOUNTS",
    "EPS_ID",
    "NEW_OBS",
    "NSTEP_COLUMNS",
    "OBS",
    "Q_VALUES",
    "REWARDS",
    "SAMPLED_COLUMNS",
    "TERMINATEDS",
    "TRANSITION_COLUMNS",
    "TRUNCATEDS",
    "VALUE_TARGETS",
    "VF_PREDS",
]

#: The id of the policy of a single-agent algorithm.
DEFAULT_POLICY_ID = "default_policy"

OBS = "obs"
NEW_OBS = "new_obs"
ACTIONS = "actions"
REWARDS = "rewards"
TERMINATEDS = "terminateds"
TRUNCATEDS = "truncateds"
ACTION_LOGP = "action_logp"
ACTION_DIST_INPUTS = "action_dist_inputs"
VF_PREDS = "vf_preds"
Q_VALUES = "q_values"
ADVANTAGES = "advantages"
VALUE_TARGETS = "value_targets"
EPS_ID = "eps_id"
AGENT_INDEX = "agent_index"
#: The discount to bootstrap an n-step row with: ``gamma ** k``, ``k`` the rewards it sums.
DISCOUNTS = "discounts"

#: What the env runner records for every step (besides the policy's extra outputs).
SAMPLED_COLUMNS = (OBS, NEW_OBS, ACTIONS, REWARDS, TERMINATEDS, TRUNCATEDS)
#: One transition, as off-policy algorithms replay it.
TRANSITION_COLUMNS = (OBS, ACTIONS, REWARDS, NEW_OBS, TERMINATEDS, TRUNCATEDS)
#: One n-step row, as DQN replays it (``rewards``: the discounted n-step sum).
NSTEP_COLUMNS = (OBS, ACTIONS, REWARDS, NEW_OBS, TERMINATEDS, DISCOUNTS)
