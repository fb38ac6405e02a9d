"""The jax APIs that moved between the pinned jax (0.5.3) and current jax, in one place.

Both stacks are tested: requirements.txt (`make test`) and requirements-latest.txt
(`make test-latest`).
"""

from typing import Callable

import jax


def enable_x64(enabled: bool = True):
  """A context manager: 64-bit floats and ints inside it (or 32-bit, enabled=False).

  `jax.enable_x64` on current jax; `jax.experimental.enable_x64` on jax 0.5.x, which
  has only that one.
  """
  if hasattr(jax, 'enable_x64'):
    return jax.enable_x64(enabled)
  from jax.experimental import enable_x64 as old  # pylint: disable=g-import-not-at-top
  return old(enabled)


def shard_map(f: Callable, mesh: jax.sharding.Mesh, in_specs, out_specs) -> Callable:
  """f on each device's shard of `mesh`, without the replication check.

  `jax.shard_map(..., check_vma=False)` on jax >= 0.6;
  `jax.experimental.shard_map.shard_map(..., check_rep=False)` before.
  """
  if hasattr(jax, 'shard_map'):
    return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
  from jax.experimental.shard_map import shard_map as old  # pylint: disable=g-import-not-at-top
  return old(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)
