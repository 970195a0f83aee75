"""Resuming exactly, and in part: a read right after a background save gets that save; a policy
given ready-made to add_policy comes back with its own config and seed; the saved mapping given
again keeps the running episodes; a save of an algorithm restored in part says what it lacks
(and retention keeps the checkpoint that has it); removed or unloaded policies report no returns."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest

import amber
import amber.checkpoint as checkpoint_module
from amber.algorithms.algorithm import Algorithm
from amber.algorithms.given_again import same_episodes, same_function
from amber.algorithms.ppo import PPOConfig
from amber.async_save import wait_for_saves
from amber.envs import MultiAgentCartPole
from amber.policy.policy import Policy

TINY = {"train_batch_size": 64, "minibatch_size": 32, "num_epochs": 1, "model": {"fcnet_hiddens": [8]}}


def by_id(agent_id, episode, worker, **kw):
    return f"p{agent_id}"


def p0_or_guest(agent_id, episode, worker, **kw):
    return "p0" if agent_id == 0 else "guest"


def only_p0_p1(agent_id, episode, worker, **kw):
    return "p0" if agent_id == 0 else "p1"


for _fn in (by_id, p0_or_guest, only_p0_p1):
    amber.register_class(_fn, name=f"tests.resume_faults.{_fn.__name__}")


def multi(n=2, fn=by_id, seed=0, **training):
    return (PPOConfig().environment(MultiAgentCartPole, env_config={"num_agents": n})
            .multi_agent(policies={f"p{i}" for i in range(n)}, policy_mapping_fn=fn)
            .training(**{**TINY, **training}).reporting(log_results=False).debugging(seed=seed))


def same_weights(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(autouse=True)
def _settled():
    yield
    try:
        wait_for_saves()
    except Exception:  # noqa: BLE001, S110 - a test that expected a failure checked it
        pass


@pytest.fixture
def gate(monkeypatch):
    """Background writes (in the writer's thread) wait until ``gate.set()``; opened at the end."""
    opened, real = threading.Event(), checkpoint_module.write_checkpoint

    def gated(path, **kwargs):
        if threading.current_thread().name == "amber-save":
            assert opened.wait(60), "the test never opened the gate"
        return real(path, **kwargs)

    monkeypatch.setattr(checkpoint_module, "write_checkpoint", gated)
    yield opened
    opened.set()


def read_in_thread(fn):
    out: dict = {}

    def run():
        try:
            out["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            out["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


# -- 1. a read waits for the background save in flight to that path ------------------------------

@pytest.mark.parametrize("how", ["from_checkpoint", "restore", "policy"])
def test_a_read_right_after_a_background_save_gets_that_save(tmp_path, gate, how):
    algo = multi().build()
    path = tmp_path / "latest"
    algo.train()
    algo.save(path)  # iteration 1 at path
    algo.train()
    handle = algo.save(path, block=False)  # iteration 2, held at the gate
    reads = {"from_checkpoint": lambda: Algorithm.from_checkpoint(path).iteration,
             "restore": lambda: (algo.restore(path), algo.iteration)[1],
             "policy": lambda: Policy.from_checkpoint(path / "policies" / "p0").global_timestep}
    thread, out = read_in_thread(reads[how])
    thread.join(0.5)
    assert thread.is_alive() and not out, f"the read did not wait for the save: {out}"
    want = 2 if how != "policy" else algo.get_policy("p0").global_timestep
    gate.set()
    thread.join(60)
    assert out == {"result": want}
    assert handle.result().checkpoint.path == str(path)


@pytest.mark.parametrize("how", ["get_checkpoint_info", "verify", "load_policy"])
def test_inspecting_or_serving_right_after_a_background_save_gets_that_save(tmp_path, gate, how):
    """get_checkpoint_info and verify read manifests without read_checkpoint: they too wait for this
    process's save in flight to the path (they had described or verified the checkpoint it replaces);
    amber.serve.load_policy, which reads through read_checkpoint, serves the new one."""
    from amber.serve import load_policy
    from amber.utils.checkpoints import get_checkpoint_info, verify

    algo = multi().build()
    path = tmp_path / "latest"
    algo.save(path, format="msgpack")  # iteration 0 at path
    algo.train()
    handle = algo.save(path, format="msgpack", block=False)  # iteration 1, held at the gate
    obs = np.zeros(4, np.float32)
    reads = {"get_checkpoint_info": lambda: get_checkpoint_info(path)["created"],
             "verify": lambda: verify(path).ok,
             "load_policy": lambda: load_policy(path, "p0").compute_single_action(obs)[2]["action_dist_inputs"]}
    thread, out = read_in_thread(reads[how])
    thread.join(0.5)
    assert thread.is_alive() and not out, f"the read did not wait for the save: {out}"
    gate.set()
    thread.join(60)
    handle.result()
    want = {"get_checkpoint_info": lambda: get_checkpoint_info(path)["created"], "verify": lambda: True,
            "load_policy": lambda: algo.get_policy("p0").compute_single_action(obs, explore=False)[2][
                "action_dist_inputs"]}[how]()
    assert "result" in out, out
    if how == "load_policy":
        np.testing.assert_allclose(out["result"], want, atol=1e-5)
    else:
        assert out["result"] == want
    algo.stop()


def test_a_read_of_a_new_path_waits_and_one_of_another_path_does_not(tmp_path, gate):
    amber.save({"x": np.ones(3)}, tmp_path / "other")
    handle = amber.save({"x": np.arange(3)}, tmp_path / "new", block=False)
    assert amber.load(tmp_path / "other")["x"].tolist() == [1, 1, 1]  # not held up by the save
    assert not handle.done()
    thread, out = read_in_thread(lambda: amber.load(tmp_path / "new"))
    thread.join(0.5)
    assert thread.is_alive() and not out, f"the read did not wait for the save: {out}"
    gate.set()
    thread.join(60)
    assert out["result"]["x"].tolist() == [0, 1, 2]


def test_a_read_after_a_failed_background_save_warns_and_reads_what_was_there(tmp_path, monkeypatch):
    path = tmp_path / "ck"
    amber.save({"x": np.ones(2)}, path)
    started, real = threading.Event(), checkpoint_module.write_checkpoint

    def failing(p, **kwargs):
        if threading.current_thread().name == "amber-save":
            started.wait(60)
            raise amber.errors.CheckpointWriteError("disk full", path=p)
        return real(p, **kwargs)

    monkeypatch.setattr(checkpoint_module, "write_checkpoint", failing)
    handle = amber.save({"x": np.zeros(2)}, path, block=False)
    threading.Timer(0.3, started.set).start()
    with pytest.warns(UserWarning, match="background save to .* failed"):
        assert amber.load(path)["x"].tolist() == [1, 1]
    assert isinstance(handle.exception(), amber.errors.CheckpointWriteError)


# -- 2 and 6. a ready-made policy comes back with its own config; saved policies with their seeds -----

@pytest.mark.parametrize("fmt", ["msgpack", "pickle"])
def test_a_ready_made_policy_is_restored_with_its_own_config(tmp_path, fmt):
    donor = (PPOConfig().environment("CartPole-v1").reporting(log_results=False)
             .training(**{**TINY, "lr": 0.01, "gamma": 0.5, "model": {"fcnet_hiddens": [16, 16]}}).build())
    donor.train()
    guest = Policy.from_checkpoint(donor.get_policy().export_checkpoint(tmp_path / "guest"))
    host = multi(fn=p0_or_guest).multi_agent(policies={"p0"}).build()
    host.add_policy("guest", policy=guest, policy_mapping_fn=p0_or_guest)
    host.train()
    ck = host.save(tmp_path / "ck", format=fmt).checkpoint.path
    host.train()
    fresh = multi(fn=p0_or_guest).multi_agent(policies={"p0"}).build()
    fresh.restore(ck)
    for algo in (Algorithm.from_checkpoint(ck), fresh):
        g = algo.get_policy("guest")
        assert (g.config["lr"], g.config["gamma"], g.config["model"]["fcnet_hiddens"]) == (0.01, 0.5, [16, 16])
        assert g.config["seed"] == guest.config["seed"]
        algo.train()
        assert same_weights(g, host.get_policy("guest"))


def test_a_policy_rebuilt_in_another_place_keeps_its_saved_seed(tmp_path):
    algo = multi(seed=3).build()
    algo.add_policy("pnew", policy_state=algo.get_policy("p0").get_state(), policy_mapping_fn=by_id)
    algo.remove_policy("p1", policy_mapping_fn=lambda a, *x, **k: "pnew" if a == 1 else "p0")
    ck = algo.save(tmp_path / "ck", format="pickle").checkpoint.path
    seeds = {pid: p.config["seed"] for pid, p in algo.policies.items()}
    assert seeds == {"p0": 3000, "pnew": 3002}
    assert {p: q.config["seed"] for p, q in Algorithm.from_checkpoint(ck).policies.items()} == seeds
    fresh = multi(seed=3).build()
    fresh.restore(ck)
    assert fresh.get_policy("pnew").config["seed"] == 3002
    assert "seed" not in fresh.config.policies["pnew"].config  # the saved spec, as it was
    sub = Algorithm.from_checkpoint(ck, policy_ids=["pnew"], policy_mapping_fn=lambda *a, **k: "pnew")
    assert sub.get_policy("pnew").config["seed"] == 3002


# -- 3. the saved mapping given again keeps the running episodes -------------------------------------

def test_the_saved_mapping_given_again_continues_exactly(tmp_path):
    algo = multi().build()
    algo.train()
    ck = algo.save(tmp_path / "ck", format="msgpack").checkpoint.path
    algo.train()
    again = Algorithm.from_checkpoint(ck, policy_mapping_fn=by_id)
    again.train()
    assert same_weights(again.get_policy("p0"), algo.get_policy("p0"))


def test_a_pickled_lambda_given_again_continues_exactly(tmp_path):
    algo = multi(fn=lambda aid, *a, **k: f"p{aid}").build()
    algo.train()
    ck = algo.save(tmp_path / "ck", format="pickle").checkpoint.path
    algo.train()
    again = Algorithm.from_checkpoint(ck, allow_pickle=True,
                                      policy_mapping_fn=lambda aid, *a, **k: f"p{aid}")
    again.train()
    assert same_weights(again.get_policy("p0"), algo.get_policy("p0"))


def test_another_mapping_or_a_subset_restarts_the_episodes():
    own = {"config": {"policy_mapping_fn": by_id, "policies": {"p0": None, "p1": None}}}
    assert same_episodes(own, None, None, None) and same_episodes(own, None, by_id, None)
    assert not same_episodes(own, ["p0"], by_id, None)
    assert not same_episodes(own, None, only_p0_p1, None)
    scale = 2
    assert not same_function(lambda a: f"p{a}", lambda a: f"q{a}")
    assert not same_function(lambda a: a * scale, lambda a: a * scale * 1)
    assert same_function(lambda a: a * scale, lambda a: a * scale)


# -- 4 and 5. a restore in part: the save warns; retention keeps the source; returns are pruned -----

def test_a_save_after_a_subset_restore_warns_once_and_retention_keeps_the_source(tmp_path):
    algo = multi(n=3).build()
    algo.train()
    manager = amber.CheckpointManager(tmp_path / "run", num_to_keep=1)
    first = manager.save(algo).checkpoint.path
    sub = Algorithm.from_checkpoint(first, policy_ids=["p0", "p1"], policy_mapping_fn=only_p0_p1)
    result = sub.train()
    assert set(result["policy_return_mean"]) <= {"p0", "p1"}  # p2's frozen returns are gone
    with pytest.warns(UserWarning, match=r"lacks \['p2'\], which .*checkpoint_000001 still holds"):
        manager.save(sub)
    sub.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        manager.save(sub)  # warned once
    kept = [c.path.name for c in manager.checkpoints()]
    assert kept == ["checkpoint_000001", "checkpoint_000003"]


def test_a_removed_policy_reports_no_returns_and_a_new_one_of_its_id_starts_afresh():
    algo = multi().build()
    assert "p1" in algo.train()["policy_return_mean"]
    algo.remove_policy("p1", policy_mapping_fn=lambda *a, **k: "p0")
    assert "p1" not in algo.train()["policy_return_mean"]
    assert "p1" not in algo.progress.recent_policy_returns
