"""Serving saved policies without torch; the public entry is :mod:`amber.serve`.

Not part of the engine: like the RL core, it reads checkpoints through the
engine and knows which formats can be served (only those that cannot run
code when read) and which exported model files it can run.
"""
