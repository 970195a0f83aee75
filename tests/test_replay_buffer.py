"""ReplayBuffer: ring storage, uniform seeded sampling, and its state through every format."""

from __future__ import annotations

import numpy as np
import pytest

import amber
from amber.utils.replay_buffers import ReplayBuffer

from .test_contract import CONTRACT_FORMATS


def rows(start, n, obs_dim=3):
    """``n`` transitions numbered from ``start`` (every column says which row it is)."""
    idx = np.arange(start, start + n)
    return {"obs": np.repeat(idx[:, None], obs_dim, axis=1).astype(np.float32),
            "actions": idx.astype(np.int64), "terminateds": idx % 2 == 0}


def held(buffer):
    """The row numbers the buffer holds, oldest first (reads its state, not its samples)."""
    state = buffer.get_state()
    actions = state["columns"]["actions"]
    if len(buffer) < buffer.capacity:
        return actions.tolist()
    return np.roll(actions, -buffer.cursor).tolist()


# -- ring storage -----------------------------------------------------------------------------


def test_rows_wrap_around_and_overwrite_the_oldest():
    buf = ReplayBuffer(5, seed=0)
    buf.add(rows(0, 3))
    assert (len(buf), buf.cursor, held(buf)) == (3, 3, [0, 1, 2])
    buf.add(rows(3, 4))  # wraps: rows 5 and 6 overwrite 0 and 1
    assert (len(buf), buf.cursor, buf.num_added) == (5, 2, 7)
    assert held(buf) == [2, 3, 4, 5, 6]
    storage = buf.get_state()["columns"]
    assert storage["actions"].tolist() == [5, 6, 2, 3, 4]
    assert np.array_equal(storage["obs"][:, 0], storage["actions"].astype(np.float32))
    assert storage["terminateds"].tolist() == [False, True, True, False, True]


def test_an_add_larger_than_the_capacity_keeps_the_newest_rows():
    buf = ReplayBuffer(4, seed=0)
    buf.add(rows(0, 1))
    buf.add(rows(1, 10))
    assert len(buf) == 4 and buf.num_added == 11
    assert held(buf) == [7, 8, 9, 10]


def test_storage_is_preallocated_numpy_of_the_columns_dtypes():
    buf = ReplayBuffer(100, seed=0)
    buf.add(rows(0, 2))
    cols = buf.get_state()["columns"]
    assert {k: v.dtype for k, v in cols.items()} == {"obs": np.float32, "actions": np.int64,
                                                     "terminateds": np.bool_}
    assert all(v.base is not None and v.base.shape[0] == 100 for v in cols.values())
    assert buf.nbytes == 2 * (3 * 4 + 8 + 1)


def test_columns_must_match_and_be_equally_long():
    buf = ReplayBuffer(5)
    with pytest.raises(ValueError, match="differ in length"):
        buf.add({"obs": np.zeros((3, 2)), "actions": np.zeros(2)})
    buf.add(rows(0, 2))
    with pytest.raises(ValueError, match="columns"):
        buf.add({"obs": np.zeros((1, 3), np.float32), "actions": np.zeros(1, np.int64)})
    assert held(buf) == [0, 1]


@pytest.mark.parametrize("capacity", [0, -3])
def test_capacity_must_be_positive(capacity):
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(capacity)


# -- sampling ------------------------------------------------------------------------------


def test_sampling_is_uniform_over_the_rows_held():
    buf = ReplayBuffer(20, seed=3)
    buf.add(rows(0, 30))  # holds 10..29
    batch = buf.sample(40_000)
    counts = np.bincount(batch["actions"], minlength=30)
    assert counts[:10].sum() == 0
    expected = 40_000 / 20
    chi2 = float(((counts[10:] - expected) ** 2 / expected).sum())
    assert chi2 < 45.0  # 19 degrees of freedom: p ~ 0.001
    assert np.array_equal(batch["obs"][:, 0], batch["actions"].astype(np.float32))  # rows stay whole


def test_sampling_follows_the_seed():
    def draws(seed):
        buf = ReplayBuffer(50, seed=seed)
        buf.add(rows(0, 50))
        return [buf.sample(8)["actions"].tolist() for _ in range(3)]

    assert draws(1) == draws(1)
    assert draws(1) != draws(2)


def test_samples_are_copies():
    buf = ReplayBuffer(4, seed=0)
    buf.add(rows(0, 4))
    batch = buf.sample(4)
    batch["actions"][:] = -1
    assert sorted(held(buf)) == [0, 1, 2, 3]


# -- the empty buffer ---------------------------------------------------------------------------


def test_empty_buffer():
    buf = ReplayBuffer(8, seed=0)
    assert len(buf) == 0 and buf.columns == [] and buf.nbytes == 0
    with pytest.raises(ValueError, match="empty"):
        buf.sample(1)
    buf.add({"obs": np.zeros((0, 3), np.float32), "actions": np.zeros(0, np.int64)})
    assert len(buf) == 0 and buf.columns == []
    clone = ReplayBuffer(1)
    clone.set_state(buf.get_state())
    assert (clone.capacity, len(clone)) == (8, 0)
    clone.add(rows(0, 2))
    assert held(clone) == [0, 1]


def test_clear_drops_the_rows_and_keeps_the_rng_going():
    buf, twin = ReplayBuffer(6, seed=5), ReplayBuffer(6, seed=5)
    for b in (buf, twin):
        b.add(rows(0, 6))
        b.sample(3)
    buf.clear()
    assert len(buf) == 0 and buf.cursor == 0
    with pytest.raises(ValueError, match="empty"):
        buf.sample(1)
    buf.add(rows(0, 6))
    assert buf.sample(5)["actions"].tolist() == twin.sample(5)["actions"].tolist()


# -- state -----------------------------------------------------------------------------------------


def test_get_state_shares_memory_with_the_storage():
    buf = ReplayBuffer(10, seed=0)
    buf.add(rows(0, 7))
    state = buf.get_state()
    for col in state["columns"].values():
        assert len(col) == 7
    buf.add(rows(7, 1))
    # a view: the row written after get_state is in the storage the state points into
    assert state["columns"]["actions"].base[7] == 7
    assert np.shares_memory(state["columns"]["obs"], buf.get_state()["columns"]["obs"])


@pytest.mark.parametrize("fmt", CONTRACT_FORMATS)
@pytest.mark.parametrize("fill", [0, 7, 13])  # empty, partly full, full and wrapped
def test_state_round_trips_through_every_format(contract_pm, tmp_path, fmt, fill):
    buf = ReplayBuffer(10, seed=11)
    if fill:
        buf.add(rows(0, fill))
        buf.sample(5)  # the RNG has moved
    path = amber.save({"buffer": buf.get_state()}, tmp_path / "ck", format=fmt, pm=contract_pm)
    restored = ReplayBuffer(1)
    restored.set_state(amber.load(path, pm=contract_pm)["buffer"])
    assert (restored.capacity, len(restored), restored.cursor, restored.num_added) == (
        buf.capacity, len(buf), buf.cursor, buf.num_added)
    if fill:
        assert held(restored) == held(buf)
        a, b = restored.sample(32), buf.sample(32)
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    for b in (buf, restored):
        b.add(rows(100, 4))
    assert held(restored) == held(buf)


def test_state_without_data_keeps_the_rng_and_counters_only():
    buf, twin = ReplayBuffer(10, seed=4), ReplayBuffer(10, seed=4)
    for b in (buf, twin):
        b.add(rows(0, 6))
        b.sample(3)
    state = buf.get_state(include_data=False)
    assert "columns" not in state and state["size"] == 0
    restored = ReplayBuffer(1)
    restored.set_state(state)
    assert (len(restored), restored.capacity, restored.num_added) == (0, 10, 6)
    twin.clear()
    for b in (restored, twin):
        b.add(rows(50, 4))
    assert restored.sample(6)["actions"].tolist() == twin.sample(6)["actions"].tolist()


def test_set_state_takes_the_states_capacity():
    small = ReplayBuffer(4, seed=0)
    small.add(rows(0, 3))
    small.add(rows(3, 3))  # full and wrapped: storage 4 5 2 3, cursor 2
    big = ReplayBuffer(100, seed=0)
    big.add(rows(0, 50))
    big.set_state(small.get_state())
    assert (big.capacity, len(big), big.cursor) == (4, 4, 2)
    assert held(big) == [2, 3, 4, 5]
    big.add(rows(6, 3))
    assert held(big) == [5, 6, 7, 8]
    grown = ReplayBuffer(4, seed=0)
    partial = ReplayBuffer(50, seed=0)
    partial.add(rows(0, 3))
    grown.set_state(partial.get_state())
    grown.add(rows(3, 10))
    assert grown.capacity == 50 and held(grown) == list(range(13))


def test_a_full_state_that_owns_its_arrays_is_adopted_without_a_copy():
    buf = ReplayBuffer(6, seed=0)
    buf.add(rows(0, 8))
    state = buf.get_state()
    state["columns"] = {k: v.copy() for k, v in state["columns"].items()}  # as a reader hands them back
    restored = ReplayBuffer(1)
    restored.set_state(state)
    for k, v in state["columns"].items():
        assert np.shares_memory(restored.get_state()["columns"][k], v)
    assert held(restored) == held(buf)


def test_set_state_never_writes_into_the_given_arrays():
    buf = ReplayBuffer(6, seed=0)
    buf.add(rows(0, 3))
    state = buf.get_state()
    before = {k: v.copy() for k, v in state["columns"].items()}
    restored = ReplayBuffer(1)
    restored.set_state(state)
    restored.add(rows(10, 6))
    for k, v in state["columns"].items():
        assert np.array_equal(v, before[k])


def _state(**changes):
    buf = ReplayBuffer(5, seed=0)
    buf.add(rows(0, 3))
    state = buf.get_state()
    state.update(changes)
    return state


@pytest.mark.parametrize(("changes", "match"), [
    ({"capacity": 0}, "capacity 0"),
    ({"size": 6}, "size 6"),
    ({"size": -1}, "size -1"),
    ({"cursor": 5}, "cursor 5"),
    ({"cursor": 1}, "size 3, cursor 1"),  # not full, yet the next row would overwrite row 1
    ({"size": 4, "cursor": 4}, "holds 4 rows"),
    ({"columns": {}}, "holds 3 rows"),
    ({"columns": {"obs": np.zeros((3, 3), np.float32), "actions": np.zeros(2, np.int64)}}, "columns differ"),
])
def test_invalid_states_are_refused_and_change_nothing(changes, match):
    buf = ReplayBuffer(8, seed=1)
    buf.add(rows(0, 5))
    with pytest.raises(ValueError, match=match):
        buf.set_state(_state(**changes))
    assert (buf.capacity, len(buf), buf.cursor, held(buf)) == (8, 5, 5, [0, 1, 2, 3, 4])


def test_a_bad_rng_state_is_refused_and_changes_nothing():
    buf, twin = ReplayBuffer(8, seed=1), ReplayBuffer(8, seed=1)
    for b in (buf, twin):
        b.add(rows(0, 5))
    with pytest.raises((ValueError, TypeError, KeyError)):
        buf.set_state(_state(rng={"bit_generator": "NoSuchGenerator", "state": {}}))
    assert held(buf) == [0, 1, 2, 3, 4]
    assert buf.sample(4)["actions"].tolist() == twin.sample(4)["actions"].tolist()
