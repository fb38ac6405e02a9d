"""Spreading independent work over the JAX devices of one or several processes.

The kernel's Jacobian blocks and Gram columns (`ntk.py`) and the simulators'
paths (`dynamics.py`) are independent per sample or per path; `per_device`
runs each device on its shard with `shard_map`. Not jit's automatic
partitioning: with jax 0.5.3 on CPU, vmap(jacrev) of the ResNet with its batch
sharded that way gave wrong Jacobians (errors of 25% of their scale), while
shard_map gives the one-device result.

Several processes (hosts): after `initialize`, the mesh spans every device of
every process. Each process holds the whole of every input and gets the whole
of every output back: the work is split, the memory is not. So every process
must make the same calls with the same arguments, in the same order.
"""

import functools
from typing import Callable

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from ntk_time import compat

P = jax.sharding.PartitionSpec


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Joins this process to a run over several processes: `jax.distributed.initialize`.

  With no arguments JAX detects the cluster (SLURM, Open MPI, Kubernetes, TPU
  pods); otherwise every process gets the same coordinator 'host:port' and
  process count, and its own process id. Call before anything else uses JAX.
  """
  # CPU processes exchange results over gloo; JAX's default CPU client has no collectives.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh, axis 'd', over the first `num_devices` devices (None: all, of every process)."""
  if num_devices is not None and jax.process_count() > 1:
    raise ValueError(f'num_devices={num_devices} is for one process; over '
                     f'{jax.process_count()} processes every device takes part')
  return jax.sharding.Mesh(np.array(jax.devices()[:num_devices]), ('d',))


def same_everywhere(tree):
  """`tree` as process 0 has it, on every process (a no-op in a single process).

  For what each process computed itself (pretrained weights, loaded data) and
  that must agree exactly before the processes split work on it.
  """
  if jax.process_count() == 1:
    return tree
  return jax.device_get(multihost_utils.broadcast_one_to_all(tree))


def distribute(x, m: jax.sharding.Mesh, spec) -> jax.Array:
  """`x` (this process' whole copy) laid out by `spec` over the devices of mesh `m`.

  For an argument that several `per_device` calls share: laid out once, not per call.
  """
  sharding = jax.sharding.NamedSharding(m, spec)
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    data = distribute(jax.random.key_data(x), m, spec)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def per_device(f: Callable, m: jax.sharding.Mesh, in_specs, out_specs) -> Callable:
  """f on each device's shard (shard_map), jitted.

  Over several processes, the arguments are each process' whole copies (or
  arrays from `distribute`) and the outputs are gathered whole to every
  process, as numpy arrays.
  """
  run = jax.jit(compat.shard_map(f, m, in_specs, out_specs))
  if jax.process_count() == 1:
    return run

  def laid_out(a, spec):
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
      return a  # from `distribute` already
    return distribute(a, m, spec)

  def across_processes(*args):
    # Each spec applies to every array of its argument (a prefix, as in shard_map).
    out = run(*(jax.tree.map(lambda a, s=s: laid_out(a, s), arg)
                for arg, s in zip(args, in_specs)))
    return multihost_utils.process_allgather(out, tiled=True)
  return across_processes


def map_leading(f: Callable, batched, *shared, num_devices: int | None = None):
  """f(batched, *shared) with the leading axis of `batched` split over the devices.

  `batched` is an array or a pytree of arrays with the same leading axis (paths
  with their keys and hyper-parameters); f must treat its entries independently
  (a vmap over paths or batch orders). They are padded to a multiple of the
  device count with copies of the last entry, and every output's leading axis
  is trimmed back.
  """
  m = mesh(num_devices)
  d = m.devices.size
  s = jax.tree.leaves(batched)[0].shape[0]
  pad = -s % d
  if pad:
    batched = jax.tree.map(
        lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]), batched)
  run = _leading(f, m, len(shared))
  return jax.tree.map(lambda a: a[:s], run(batched, *shared))


@functools.lru_cache(maxsize=64)
def _leading(f: Callable, m: jax.sharding.Mesh, num_shared: int) -> Callable:
  """map_leading's jitted function: one per (f, mesh), so that a caller passing the same
  f (dynamics' `_paths`) traces and compiles once per shape, not once per call."""
  return per_device(f, m, (P('d'),) + (P(),) * num_shared, P('d'))
