"""Reads RLlib 2.10's own msgpack checkpoints, without Ray (work in progress)."""
