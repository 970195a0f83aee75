"""Neural network models and action distributions (RLlib's ``ray.rllib.models``).

Importing this package imports nothing heavy; import
:mod:`amber.models.torch_mlp` or :mod:`amber.models.torch_distributions`
for the torch ones, :mod:`amber.models.numpy_mlp` for networks in numpy alone.
"""
