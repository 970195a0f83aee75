"""The ``msgpack`` format (placeholder until its plugin lands)."""
