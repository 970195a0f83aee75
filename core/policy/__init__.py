"""Policies: the networks that map observations to actions (RLlib's ``ray.rllib.policy``)."""
