"""Spreading independent work over the local JAX devices.

The kernel's Jacobian blocks and Gram columns (`ntk.py`) and the simulators'
paths (`dynamics.py`) are independent per sample or per path; `per_device`
runs each device on its shard with `shard_map`. Not jit's automatic
partitioning: with jax 0.5.3 on CPU, vmap(jacrev) of the ResNet with its batch
sharded that way gave wrong Jacobians (errors of 25% of their scale), while
shard_map gives the one-device result.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

P = jax.sharding.PartitionSpec


def mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh, axis 'd', over the first `num_devices` local devices (None: all)."""
  return jax.sharding.Mesh(np.array(jax.local_devices()[:num_devices]), ('d',))


def per_device(f: Callable, m: jax.sharding.Mesh, in_specs, out_specs) -> Callable:
  """f on each device's shard (shard_map), jitted."""
  if hasattr(jax, 'shard_map'):  # jax >= 0.6
    return jax.jit(jax.shard_map(f, mesh=m, in_specs=in_specs, out_specs=out_specs,
                                 check_vma=False))
  from jax.experimental.shard_map import shard_map  # pylint: disable=g-import-not-at-top
  return jax.jit(shard_map(f, mesh=m, in_specs=in_specs, out_specs=out_specs, check_rep=False))


def map_leading(f: Callable, batched, *shared, num_devices: int | None = None):
  """f(batched, *shared) with `batched`'s leading axis split over the devices.

  f must treat the entries of that axis independently (a vmap over paths or
  batch orders); `batched` is padded to a multiple of the device count with
  copies of its last entry, and every output's leading axis trimmed back.
  """
  m = mesh(num_devices)
  d = m.devices.size
  s = batched.shape[0]
  pad = -s % d
  if pad:
    batched = jnp.concatenate([batched, jnp.repeat(batched[-1:], pad, axis=0)])
  run = per_device(f, m, (P('d'),) + (P(),) * len(shared), P('d'))
  return jax.tree.map(lambda a: a[:s], run(batched, *shared))
