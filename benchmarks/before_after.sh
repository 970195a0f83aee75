#!/bin/bash
# Usage: git worktree add /tmp/amber_old <old commit>; python3 -m venv /tmp/oldvenv;
# /tmp/oldvenv/bin/pip install torch==2.13.0 /tmp/amber_old; then run this from anywhere.
# Before (7302593, start of this session) vs after (HEAD) in one run, alternating.
NEW=$(cd "$(dirname "$0")/.." && pwd); OLD=${AMBER_OLD:-/tmp/amber_old}
mkdir -p /tmp/bench
cd /tmp/bench
for pair in 1 2; do
  (cd $OLD && /tmp/oldvenv/bin/python benchmarks/ppo_iteration_speed.py --iters 3 --no-sb3 --no-rllib) > ppo_old_$pair.log 2>&1
  (cd $NEW && .venv/bin/python benchmarks/ppo_iteration_speed.py --iters 3 --no-sb3 --no-rllib) > ppo_new_$pair.log 2>&1
done
(cd $NEW && .venv/bin/python benchmarks/ppo_update_speed.py --repeat 3) > update_new.log 2>&1
for pair in 1 2; do
  (cd $OLD && /tmp/oldvenv/bin/python benchmarks/checkpoint_io.py --size-mb 100 --repeat 3 --no-cold) > io_old_$pair.log 2>&1
  (cd $NEW && AMBER_KEY_FILE=/tmp/bench/key .venv/bin/python benchmarks/checkpoint_io.py --size-mb 100 --repeat 3 --no-cold) > io_new_$pair.log 2>&1
done
(cd $OLD && /tmp/oldvenv/bin/python benchmarks/algo_checkpoints.py --repeat 3) > algo_old.log 2>&1
(cd $NEW && AMBER_KEY_FILE=/tmp/bench/key .venv/bin/python benchmarks/algo_checkpoints.py --repeat 3) > algo_new.log 2>&1
echo done > finished
