"""The empirical NTK of a network at its pretrained weights.

The only module that imports neural-tangents (lazily: the direct path runs
where it cannot be imported, e.g. with jax >= 0.6 on current GPU images).

Θ = J Jᵀ with J = ∂F/∂w at w0, an N×N grid of C×C blocks: `k_train_train`
[N, N, C, C] (neural-tangents' `trace_axes=()`, `vmap_axes=0`), `k_test_train`
[N_test, N, C, C]. The class-traced kernel is neural-tangents' `trace_axes=(-1,)`:
K_ij = tr(Θ_ij) / C, [N, N], for the approximation Θ ≈ K ⊗ I_C.

Implementations:
  'direct'                   one batched vmap(jacrev) pass storing J by blocks,
                             then J Jᵀ by row blocks (one BLAS matmul each);
                             the samples spread over all devices (of every
                             process, see devices.py), and
                             optionally a random projection J Π (sketch_dim).
  'nt_jacobian_contraction'  nt.batch(empirical_ntk_fn(..., JACOBIAN_CONTRACTION)).
  'nt_ntvp'                  nt.batch(empirical_ntk_fn(..., NTK_VECTOR_PRODUCTS)).
'direct' is the default because it computes every Jacobian once, while
nt.batch recomputes the Jacobians of both blocks for every block pair. Measured
with `python -m experiments.bench_kernel` (N=500, C=5, ResNet-8 with 77k
parameters, 2 CPU cores, another job running): direct 16.5-24 s for blocks of
500-50 samples; neural-tangents' Jacobian contraction 41 s with one block of
500 and 78 s with blocks of 100 (22.5 s and 55 s in a quieter run); NTK-vector
products with one block of 500 asked for 455 GB and failed. Block size barely
matters for the direct path (it only bounds the memory of one Jacobian block).
"""

import dataclasses
import functools
import time
from typing import Any, Callable

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np
import scipy.sparse.linalg
import tqdm

from ntk_time import devices
from ntk_time import losses

PyTree = Any
IMPLEMENTATIONS = ('direct', 'nt_jacobian_contraction', 'nt_ntvp')


@dataclasses.dataclass
class Linearization:
  """The network linearised at w0, in function space (DESIGN §3).

  k_train_train: [N, N, C, C] (or [N, N] if traced); k_test_train: [N_test, N, C, C]
  (or [N_test, N]); fx_train_0: [N, C] and fx_test_0: [N_test, C] outputs at w0;
  jw0_train: [N, C] and jw0_test: [N_test, C], J w0 (for weight decay).
  """
  k_train_train: np.ndarray
  k_test_train: np.ndarray
  fx_train_0: np.ndarray
  fx_test_0: np.ndarray
  jw0_train: np.ndarray
  jw0_test: np.ndarray
  seconds: float = 0.0
  # For the head-aware model (dynamics.simulate_head_aware), when features are given:
  # features at w0 [N, D] / [N_test, D], (∂φ/∂θ) θ_0 likewise, head W_0 [D, C], b_0 [C].
  features_train: np.ndarray | None = None
  features_test: np.ndarray | None = None
  jw0_features_train: np.ndarray | None = None
  jw0_features_test: np.ndarray | None = None
  head_kernel: np.ndarray | None = None
  head_bias: np.ndarray | None = None
  # For the exact-feature model (dynamics.simulate_head_exact), from `with_feature_factors`:
  # Z [N, D, R] and [N_test, D, R] with G[train, train] ≈ Z Zᵀ and G[test, train] ≈ Z_test Zᵀ,
  # and the measured error of Θ(w0) at each rank 1..R_max (`feature_rank_errors`).
  feature_factors_train: np.ndarray | None = None
  feature_factors_test: np.ndarray | None = None
  feature_rank_errors: np.ndarray | None = None

  @property
  def traced(self) -> bool:
    return self.k_train_train.ndim == 2

  def full_kernels(self) -> tuple[np.ndarray, np.ndarray]:
    """[N, N, C, C] and [N_test, N, C, C]; K ⊗ I_C when traced."""
    if not self.traced:
      return self.k_train_train, self.k_test_train
    eye = np.eye(self.fx_train_0.shape[1], dtype=self.k_train_train.dtype)
    return (self.k_train_train[:, :, None, None] * eye,
            self.k_test_train[:, :, None, None] * eye)

  def arrays(self) -> dict[str, np.ndarray]:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None}

  @property
  def head_aware(self) -> bool:
    return self.features_train is not None

  def feature_kernels(self) -> tuple[np.ndarray, np.ndarray]:
    """K_φ [N, N] and [N_test, N] (see `feature_kernel`)."""
    k_tt, k_st = self.full_kernels()
    return (feature_kernel(k_tt, self.features_train, self.features_train, self.head_kernel),
            feature_kernel(k_st, self.features_test, self.features_train, self.head_kernel))


def memory_bytes(n_train: int, n_test: int, num_classes: int, num_params: int, *,
                 implementation: str, traced: bool, block_size: int, itemsize: int = 4,
                 sketch_dim: int = 0) -> int:
  """Peak host memory the kernel computation needs, in bytes (an estimate).

  Direct: J_train [N·C, P] (J Π [N·C, k] when sketched) + the kernels + one
  block's Jacobian (×3 for the backward pass' activations and the copy to
  host). neural-tangents: the kernels + the Jacobians of two blocks (×3 likewise).
  """
  c_out = 1 if traced else num_classes
  kernels = (n_train + n_test) * n_train * c_out**2
  block = 3 * block_size * num_classes * num_params
  if implementation == 'direct':
    stored = n_train * num_classes * (sketch_dim or num_params)
    return itemsize * (stored + kernels + block)
  return itemsize * (kernels + 2 * block)


def _blocks(n: int, size: int):
  return [(i, min(i + size, n)) for i in range(0, n, size)]


SKETCH_CHUNK = 4096  # rows of the sketch Π generated at a time: Π is never held at P × k
SKETCH_KINDS = ('gaussian', 'sparse_sign')


def sketch_fn(num_params: int, dim: int, key: jax.Array, kind: str = 'gaussian') -> Callable:
  """project(j: [b, C, P]) -> j Π: [b, C, dim], for a random Π [P, dim] never stored.

  kind='gaussian': Π has N(0, 1/dim) entries, generated SKETCH_CHUNK rows at a
  time from `key` and the row block's index; the projection costs b·C·P·dim.
  kind='sparse_sign': a CountSketch, one ±1 per row of Π: parameter p adds
  s_p J[:, p] to column h_p, with h_p uniform in [0, dim) and s_p = ±1 drawn
  from `key`; one scatter-add of the block, b·C·P, whatever dim.
  Either way every call (train or test samples, any block) sees the same Π and
  E[Π Πᵀ] = I, so (JΠ)(JΠ)ᵀ is an unbiased estimate of J Jᵀ. Expected squared
  error ‖(JΠ)(JΠ)ᵀ − J Jᵀ‖²_F, Θ = J Jᵀ: (tr(Θ)² + ‖Θ‖²_F) / dim for the
  Gaussian, that minus 2 Σ_p ‖J[:, p]‖⁴ / dim for the sparse sign (a parameter
  never collides with itself).
  """
  if kind not in SKETCH_KINDS:
    raise ValueError(f'unknown sketch kind {kind!r}; expected one of {SKETCH_KINDS}')
  if kind == 'sparse_sign':
    key_bucket, key_sign = jax.random.split(key)

    @jax.jit
    def count_sketch(j):
      b, c, p = j.shape
      # Drawn inside the jit from the key rather than captured: no [P] constants to
      # compile, and the same h and s for every block.
      buckets = jax.random.randint(key_bucket, (p,), 0, dim)
      signs = jax.random.rademacher(key_sign, (p,), j.dtype)
      cols = (j * signs).reshape(b * c, p).T  # [P, b·C]: segment_sum adds rows
      return jax.ops.segment_sum(cols, buckets, num_segments=dim).T.reshape(b, c, dim)
    return count_sketch

  chunks = -(-num_params // SKETCH_CHUNK)

  @jax.jit
  def project(j):
    b, c, p = j.shape
    j = jnp.pad(j, ((0, 0), (0, 0), (0, chunks * SKETCH_CHUNK - p)))
    j = j.reshape(b, c, chunks, SKETCH_CHUNK).transpose(2, 0, 1, 3)

    def add(acc, inp):
      i, block = inp
      pi = jax.random.normal(jax.random.fold_in(key, i), (SKETCH_CHUNK, dim), j.dtype)
      return acc + block @ pi, None

    acc, _ = jax.lax.scan(add, jnp.zeros((b, c, dim), j.dtype), (jnp.arange(chunks), j))
    return acc / jnp.sqrt(jnp.asarray(dim, j.dtype))
  return project


def _direct(apply_fn, params, x_train, x_test, traced, block_size, progress, sketch_dim=0,
            sketch_key=None, num_devices=None, sketch_kind='gaussian'):
  mesh = devices.mesh(num_devices)
  d = mesh.devices.size
  spec, rows = devices.P, devices.P('d')
  flat, unravel = ravel_pytree(params)

  def one(p, x):
    return apply_fn(unravel(p), x[None])[0]
  jac_local = jax.vmap(jax.jacrev(one), in_axes=(None, 0))  # [b, ...] -> [b, C, P]
  if sketch_dim:
    # Projected on the device that computed it: a block is never gathered at full P.
    project = sketch_fn(flat.size, sketch_dim, sketch_key, sketch_kind)
    jac_local = lambda p, x, f=jac_local: project(f(p, x))
  jac = devices.per_device(jac_local, mesh, (spec(), rows), rows)
  n, nt_ = len(x_train), len(x_test)
  # Blocks are padded to a multiple of the device count (repeating their last sample) so
  # that their samples split evenly over the devices; the padding is dropped at once.
  size = -(-block_size // d) * d
  blocks, test_blocks = _blocks(n, size), _blocks(nt_, size)
  bar = tqdm.tqdm(total=2 * len(blocks) + len(test_blocks), desc='kernel (direct)',
                  disable=not progress, leave=False)

  def jacobian(x):  # [b, ...] -> [b, C, P] (or [b, C, k] sketched)
    pad = -len(x) % d
    xp = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x
    return jac(flat, xp)[:len(x)]

  j_train = []  # [b, C, P] blocks of J at w0, kept so each Jacobian is computed once
  for a, b in blocks:
    j_train.append(jacobian(x_train[a:b]))
    bar.update(1)
  j_train = jnp.concatenate(j_train)  # [N, C, P]
  c = j_train.shape[1]
  # Each device holds a slice of J's samples and computes those columns of J Jᵀ; zero rows
  # pad N to a multiple of the device count (their kernel entries are zero and dropped).
  n_pad = -(-n // d) * d
  j_cols = devices.distribute(jnp.pad(j_train, ((0, n_pad - n), (0, 0), (0, 0))), mesh, rows)

  def gram_local(ja, jb):  # [b, C, P], [N/d, C, P] -> [b, N/d, C, C] or [b, N/d]
    if traced:
      return jnp.einsum('acp,bcp->ab', ja, jb) / c
    return jnp.einsum('acp,bdp->abcd', ja, jb)
  # J is an argument, not a closure: a captured array would become an XLA constant,
  # and compiling a constant of N·C·P floats is slower than the product.
  gram = devices.per_device(gram_local, mesh, (spec(), rows), spec(None, 'd'))

  k_tt = []
  for a, b in blocks:
    k_tt.append(np.asarray(gram(j_train[a:b], j_cols))[:, :n])
    bar.update(1)
  k_st = []
  for a, b in test_blocks:
    k_st.append(np.asarray(gram(jacobian(x_test[a:b]), j_cols))[:, :n])
    bar.update(1)
  bar.close()
  shape = (0, n) if traced else (0, n, c, c)
  return np.concatenate(k_tt), (np.concatenate(k_st) if k_st else np.zeros(shape, k_tt[0].dtype))


def _largest_divisor(n1: int, n2: int, at_most: int) -> int:
  g = np.gcd(n1, n2) if n2 else n1
  return max(d for d in range(1, min(at_most, g) + 1) if g % d == 0)


def _neural_tangents(apply_fn, params, x_train, x_test, traced, block_size, implementation):
  import neural_tangents as nt  # pylint: disable=g-import-not-at-top
  impl = {'nt_jacobian_contraction': nt.NtkImplementation.JACOBIAN_CONTRACTION,
          'nt_ntvp': nt.NtkImplementation.NTK_VECTOR_PRODUCTS}[implementation]
  kernel_fn = nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,) if traced else (), vmap_axes=0,
                                  implementation=impl)
  # nt.batch needs block sizes that divide both sets; it must not be jitted.
  bs = _largest_divisor(len(x_train), len(x_test), block_size)
  batched = nt.batch(kernel_fn, batch_size=bs, store_on_device=False)
  k_tt = np.asarray(batched(x_train, None, params))
  k_st = np.asarray(batched(x_test, x_train, params)) if len(x_test) else None
  return k_tt, k_st


def empirical_ntk(apply_fn: Callable, params: PyTree, x_train: np.ndarray,
                  x_test: np.ndarray | None = None, *, implementation: str = 'direct',
                  traced: bool = False, block_size: int = 100, progress: bool = False,
                  sketch_dim: int = 0, sketch_key: jax.Array | None = None,
                  sketch_kind: str = 'gaussian', num_devices: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
  """k_train_train [N, N, C, C] and k_test_train [N_test, N, C, C] ([.., N] if traced).

  Args:
    apply_fn: apply_fn(params, x) -> [n, C]; must treat samples independently
      (BatchNorm frozen), since every implementation uses vmap_axes=0.
    params: w0, the point of linearisation.
    x_train: [N, ...]; x_test: [N_test, ...] or None.
    implementation: one of IMPLEMENTATIONS.
    traced: the class-traced kernel tr(Θ_ij)/C instead of the full one.
    block_size: samples per Jacobian block.
    sketch_dim: k > 0: the random-projection estimate (JΠ)(JΠ)ᵀ with a
      [P, k] sketch of `sketch_kind` (one of SKETCH_KINDS, see `sketch_fn`) from
      `sketch_key`, which stores J Π ([N, C, k]) instead of J; 0: the exact
      kernel. Direct path only.
    num_devices: direct path: spread the samples of each Jacobian block and the
      columns of J Jᵀ over the first `num_devices` devices (None: all; over
      several processes, all devices of all of them, and every process must
      pass the same arguments: `linearize` makes sure of that).
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f'unknown kernel implementation {implementation!r}; expected one of '
                     f'{IMPLEMENTATIONS}')
  if not (isinstance(block_size, (int, np.integer)) and block_size >= 1):
    raise ValueError(f'block_size must be a positive integer, got {block_size!r}')
  if not (isinstance(sketch_dim, (int, np.integer)) and sketch_dim >= 0):
    raise ValueError(f'sketch_dim must be an integer >= 0, got {sketch_dim!r}')
  if sketch_dim and implementation != 'direct':
    raise ValueError(f'sketch_dim={sketch_dim} needs the direct implementation, got '
                     f'{implementation!r}')
  if sketch_dim and sketch_key is None:
    raise ValueError('sketch_dim > 0 needs a sketch_key')
  if sketch_kind not in SKETCH_KINDS:
    raise ValueError(f'unknown sketch_kind={sketch_kind!r}; expected one of {SKETCH_KINDS}')
  x_test = x_train[:0] if x_test is None else x_test
  if implementation == 'direct':
    return _direct(apply_fn, params, x_train, x_test, traced, block_size, progress, sketch_dim,
                   sketch_key, num_devices, sketch_kind)
  return _neural_tangents(apply_fn, params, x_train, x_test, traced, block_size, implementation)


def jvp(apply_fn: Callable, params: PyTree, tangent: PyTree, x: np.ndarray,
        chunk: int = 500) -> np.ndarray:
  """J(x) · tangent at `params`: [n, C], by one forward-mode pass per chunk."""
  f = jax.jit(lambda xs: jax.jvp(lambda p: apply_fn(p, xs), (params,), (tangent,))[1])
  if not len(x):
    return np.zeros((0, np.shape(apply_fn(params, x[:1]))[-1]), np.float32)
  return np.concatenate([np.asarray(f(x[i:i + chunk])) for i in range(0, len(x), chunk)])


def outputs(apply_fn: Callable, params: PyTree, x: np.ndarray, chunk: int = 500) -> np.ndarray:
  """apply_fn(params, x) in chunks: [n, C]."""
  f = jax.jit(apply_fn)
  if not len(x):
    return np.zeros((0, np.shape(f(params, x[:1]))[-1]), np.float32)
  return np.concatenate([np.asarray(f(params, x[i:i + chunk])) for i in range(0, len(x), chunk)])


def linearize(apply_fn: Callable, params: PyTree, x_train: np.ndarray, x_test: np.ndarray, *,
              implementation: str = 'direct', traced: bool = False, block_size: int = 100,
              memory_gb: float = 8.0, features_fn: Callable | None = None,
              sketch_dim: int = 0, sketch_key: jax.Array | None = None,
              sketch_kind: str = 'gaussian', num_devices: int | None = None,
              progress: bool = True) -> Linearization:
  """Kernel, initial outputs and J w0 of `apply_fn` at `params` on train and test.

  With `features_fn(params, x) -> [n, D]` (the features under a Dense head
  `params['head']`), also what the head-aware model needs: the features, their
  J w0, and the head.

  Says how much memory it needs before it starts and raises MemoryError, with
  the numbers, if that exceeds `memory_gb`. sketch_dim, sketch_key, sketch_kind
  and num_devices: see `empirical_ntk`.
  """
  # Over several processes, all of them linearise process 0's weights on its data.
  params, x_train, x_test = devices.same_everywhere((params, x_train, x_test))
  num_classes = int(np.shape(jax.eval_shape(apply_fn, params, x_train[:1]))[-1])
  p = sum(int(np.size(v)) for v in jax.tree.leaves(params))
  need = memory_bytes(len(x_train), len(x_test), num_classes, p, implementation=implementation,
                      traced=traced, block_size=block_size, sketch_dim=sketch_dim)
  if need > memory_gb * 2**30:
    raise MemoryError(
        f'the kernel needs about {need / 2**30:.1f} GiB (N={len(x_train)}, N_test={len(x_test)}, '
        f'C={num_classes}, P={p}, {implementation}, block_size={block_size}), more than '
        f'kernel.memory_gb={memory_gb}; use fewer samples, the traced kernel or a smaller block')
  if progress:
    print(f'kernel: N={len(x_train)}, N_test={len(x_test)}, C={num_classes}, P={p:,}, '
          f'{implementation}{" traced" if traced else ""}'
          f'{f" sketched ({sketch_kind}) to k={sketch_dim}" if sketch_dim else ""}, about '
          f'{need / 2**30:.2f} GiB')
  start = time.perf_counter()
  k_tt, k_st = empirical_ntk(apply_fn, params, x_train, x_test, implementation=implementation,
                             traced=traced, block_size=block_size, progress=progress,
                             sketch_dim=sketch_dim, sketch_key=sketch_key,
                             sketch_kind=sketch_kind, num_devices=num_devices)
  lin = Linearization(
      k_train_train=k_tt, k_test_train=k_st,
      fx_train_0=outputs(apply_fn, params, x_train), fx_test_0=outputs(apply_fn, params, x_test),
      jw0_train=jvp(apply_fn, params, params, x_train),
      jw0_test=jvp(apply_fn, params, params, x_test))
  if features_fn is not None:
    lin.features_train = outputs(features_fn, params, x_train)
    lin.features_test = outputs(features_fn, params, x_test)
    lin.jw0_features_train = jvp(features_fn, params, params, x_train)
    lin.jw0_features_test = jvp(features_fn, params, params, x_test)
    lin.head_kernel = np.asarray(params['head']['kernel'])
    lin.head_bias = np.asarray(params['head']['bias'])
  lin.seconds = time.perf_counter() - start
  return lin


DENSE_EIG_MAX = 1000  # rows of the flattened kernel up to which check_kernel uses eigvalsh
_CHECK_BLOCK = 1024  # rows per block of check_kernel's norms


def _extreme_eigenvalues(flat: np.ndarray, rtol: float) -> tuple[float, float]:
  """(λ_min, λ_max) of the symmetric part of `flat` [n, n] by Lanczos (scipy's eigsh).

  Matrix-vector products only, in the kernel's own dtype: O(n²) each, no copy.
  λ_max to 1e-6 relative; λ_min as the largest eigenvalue of λ_max I - Θ with
  tol = rtol, whose stopping rule ‖r‖ <= tol |θ| then asks for an absolute
  accuracy of about rtol · λ_max, what the PSD test needs (a tolerance relative
  to λ_min itself, ~0 for a kernel, would take thousands of products). Lanczos'
  Ritz values lie inside the spectrum, so the λ_min returned is never below the
  true one.
  """
  n = len(flat)

  def sym(v):
    v = np.asarray(v, flat.dtype).reshape(-1)
    return 0.5 * (flat @ v + v @ flat).astype(np.float64)

  op = scipy.sparse.linalg.LinearOperator((n, n), matvec=sym, dtype=np.float64)
  # A fixed start vector: ARPACK's own is random, and a slightly negative eigenvalue
  # next to a cluster at 0 was then found in some runs and not in others.
  v0 = np.random.default_rng(0).normal(size=n)
  eigsh = functools.partial(scipy.sparse.linalg.eigsh, v0=v0)
  top = float(eigsh(op, k=1, which='LA', tol=1e-6, return_eigenvectors=False)[0])
  shifted = scipy.sparse.linalg.LinearOperator(
      (n, n), matvec=lambda v: top * np.asarray(v).reshape(-1) - sym(v), dtype=np.float64)
  try:
    gap = float(eigsh(shifted, k=1, which='LA', tol=rtol, return_eigenvectors=False)[0])
  except scipy.sparse.linalg.ArpackNoConvergence as e:
    if not len(e.eigenvalues):
      raise
    gap = float(np.max(e.eigenvalues))
  return top - gap, top


def check_kernel(k: np.ndarray, rtol: float = 1e-4) -> dict:
  """Symmetry and positive semi-definiteness of k_train_train, as numbers.

  Returns {'asymmetry': ‖Θ − Θᵀ‖/‖Θ‖, 'min_eig': smallest eigenvalue,
  'max_eig': largest} and raises ValueError if Θ is not finite, not symmetric
  within rtol, or has an eigenvalue below -rtol · max_eig.

  Cheap next to the kernel: the norms by blocks of rows, and beyond
  DENSE_EIG_MAX rows of [N·C, N·C] the two extreme eigenvalues by Lanczos
  (`_extreme_eigenvalues`: O((N·C)²) per product, min_eig to about
  rtol · max_eig and never below the true one) instead of a full O((N·C)³)
  decomposition. Needs one copy of the kernel in its own dtype (none for a
  class-traced [N, N] one).
  """
  flat = flatten(np.asarray(k))
  if flat.dtype not in (np.float32, np.float64):
    flat = flat.astype(np.float64)
  n = len(flat)
  sq_norm = sq_asym = 0.0
  for a in range(0, n, _CHECK_BLOCK):
    rows = flat[a:a + _CHECK_BLOCK].astype(np.float64)
    if not np.all(np.isfinite(rows)):
      raise ValueError('the kernel has non-finite entries')
    sq_norm += float(np.sum(rows**2))
    sq_asym += float(np.sum((rows - flat[:, a:a + _CHECK_BLOCK].T) ** 2))
  asym = float(np.sqrt(sq_asym) / max(np.sqrt(sq_norm), 1e-300))
  if asym > rtol:
    raise ValueError(f'the kernel is not symmetric: relative asymmetry {asym:.2e} > {rtol}')
  if n <= DENSE_EIG_MAX:
    sym = flat.astype(np.float64)
    eig = np.linalg.eigvalsh(0.5 * (sym + sym.T))
    min_eig, max_eig = float(eig[0]), float(eig[-1])
  else:
    min_eig, max_eig = _extreme_eigenvalues(flat, rtol)
  report = {'asymmetry': asym, 'min_eig': min_eig, 'max_eig': max_eig}
  if min_eig < -rtol * max_eig:
    raise ValueError(f'the kernel is not PSD: smallest eigenvalue {min_eig:.3e} '
                     f'(largest {max_eig:.3e})')
  return report


def flatten(k: np.ndarray) -> np.ndarray:
  """[N1, N2, C, C] -> [N1·C, N2·C] with index i·C + c (an [N1, N2] kernel is returned as is)."""
  if k.ndim == 2:
    return k
  n1, n2, c, _ = k.shape
  return k.transpose(0, 2, 1, 3).reshape(n1 * c, n2 * c)


def relative_drift(k0: np.ndarray, k1: np.ndarray) -> float:
  """‖Θ1 − Θ0‖_F / ‖Θ0‖_F."""
  return float(np.linalg.norm(k1 - k0) / np.linalg.norm(k0))


def kernel_parts(apply_fn: Callable, features_fn: Callable, params: PyTree, x: np.ndarray, *,
                 block_size: int = 100) -> dict[str, np.ndarray]:
  """Θ on `x` split by parameters under a Dense head f = Wᵀ φ + b (DESIGN §3.5).

  The head's parameters give Θ_head[i, j] = (φ_iᵀ φ_j + 1) I_C; the others give
  Θ_backbone[i, j] = Wᵀ G[i, j] W (G the kernel of the features), computed from
  the Jacobian of the non-head parameters alone. Θ = Θ_head + Θ_backbone.

  Args:
    apply_fn: apply_fn(params, x) -> [n, C], BatchNorm frozen; features_fn:
      features_fn(params, x) -> [n, D], the φ under `params['head']`.
    params: the point of linearisation, with `head` {'kernel' [D, C], 'bias' [C]}.
    x: [n, ...] samples.
    block_size: samples per Jacobian block.

  Returns:
    {'head': [n, n, C, C], 'backbone': [n, n, C, C], 'features': [n, D],
    'head_kernel': [D, C]}.
  """
  head = params['head']
  backbone = {k: v for k, v in params.items() if k != 'head'}
  k_backbone, _ = empirical_ntk(lambda p, xs: apply_fn(dict(p, head=head), xs), backbone, x,
                                block_size=block_size)
  phi = outputs(features_fn, params, x)
  eye = np.eye(k_backbone.shape[-1], dtype=k_backbone.dtype)
  k_head = np.einsum('ij,cd->ijcd', (phi @ phi.T + 1.0).astype(k_backbone.dtype), eye)
  return {'head': k_head, 'backbone': k_backbone, 'features': phi,
          'head_kernel': np.asarray(head['kernel'])}


def _ratio(a: float, b: float) -> float:
  return float(a / b) if b else float('inf')  # a part that is zero at w0 (a zero head's)


def kernel_diagnosis(before: dict[str, np.ndarray], after: dict[str, np.ndarray]
                     ) -> dict[str, float]:
  """Where the kernel's change comes from, between two `kernel_parts` on the same samples.

  Θ_T = Θ_head,T + Θ_backbone,T against Θ_0 likewise (Frobenius norms):
    scale: ‖Θ_T‖/‖Θ_0‖; shape_drift: ‖Θ_T/‖Θ_T‖ − Θ_0/‖Θ_0‖‖, in [0, 2] (the
      drift ‖Θ_T − Θ_0‖/‖Θ_0‖ with the scale taken out);
    feature_growth: ‖Φ_T‖/‖Φ_0‖; head_growth: ‖W_T‖/‖W_0‖ (the head's kernel);
    head_part_growth, backbone_part_growth: ‖Θ_part,T‖/‖Θ_part,0‖;
    backbone_share_0, backbone_share_T: ‖Θ_backbone‖/‖Θ‖ at w0 and at w_T.
  A ratio to a part that is zero at w0 (a zero head) is inf.
  """
  norm = lambda a: float(np.linalg.norm(np.asarray(a, np.float64)))
  k0 = np.asarray(before['head'], np.float64) + before['backbone']
  k1 = np.asarray(after['head'], np.float64) + after['backbone']
  n0, n1 = norm(k0), norm(k1)
  return {'scale': _ratio(n1, n0), 'shape_drift': norm(k1 / n1 - k0 / n0),
          'feature_growth': _ratio(norm(after['features']), norm(before['features'])),
          'head_growth': _ratio(norm(after['head_kernel']), norm(before['head_kernel'])),
          'head_part_growth': _ratio(norm(after['head']), norm(before['head'])),
          'backbone_part_growth': _ratio(norm(after['backbone']), norm(before['backbone'])),
          'backbone_share_0': _ratio(norm(before['backbone']), n0),
          'backbone_share_T': _ratio(norm(after['backbone']), n1)}


def feature_kernel(k: np.ndarray, features_1: np.ndarray, features_2: np.ndarray,
                   head_kernel: np.ndarray) -> np.ndarray:
  """The isotropic feature kernel K_φ [N1, N2] under a Dense head, from the logit kernel.

  With f = Wᵀ φ + b, Θ[i, j] = (φ_iᵀ φ_j + 1) I_C + Wᵀ G[i, j] W, G the kernel
  of the features. Removing the head's part and tracing the rest gives
  tr(Wᵀ G W) = tr(G W Wᵀ); for a fresh random head, independent of G with
  E[W Wᵀ] ∝ I, its ratio to tr(Wᵀ W) estimates K_φ = tr(G)/D without the D
  backward passes per sample that G itself would cost.

  Args:
    k: [N1, N2, C, C] logit kernel; features_1: [N1, D], features_2: [N2, D] at w0;
    head_kernel: [D, C] the head's W at w0.
  """
  c = k.shape[-1]
  head = features_1 @ features_2.T + 1.0
  backbone = np.trace(k, axis1=2, axis2=3) - c * head
  return backbone / np.sum(np.asarray(head_kernel, np.float64) ** 2)


def _feature_jacobian_products(features_fn, params, num_features, block_size):
  """(times, t_times, P) for J_φ = ∂φ/∂w at `params` [N·D, P], by blocks of block_size samples.

  times(x: [n, ...], m: [P, k]) -> J_φ(x) m: [n·D, k]; t_times(x, m: [n·D, k]) -> J_φ(x)ᵀ m:
  [P, k]; rows i·D + a (sample i, feature a). Only one block's Jacobian [block_size·D, P]
  exists at a time. Blocks are padded to block_size samples (repeating the last one, whose
  rows are dropped or met by zeros) so that each product compiles once.
  """
  flat, unravel = ravel_pytree(params)
  jac = jax.vmap(jax.jacrev(lambda p, x: features_fn(unravel(p), x[None])[0]), in_axes=(None, 0))
  rows = lambda x: jac(flat, x).reshape(-1, flat.size)  # [b·D, P]
  times_block = jax.jit(lambda x, m: rows(x) @ m)
  t_times_block = jax.jit(lambda x, m: rows(x).T @ m)
  d = num_features

  def padded(x, a, b):
    return np.concatenate([x[a:b], np.repeat(x[b - 1:b], block_size - (b - a), axis=0)])

  def times(x, m):
    out = [np.asarray(times_block(padded(x, a, b), m))[:(b - a) * d]
           for a, b in _blocks(len(x), block_size)]
    return np.concatenate(out) if out else np.zeros((0, m.shape[1]), m.dtype)

  def t_times(x, m):
    acc = np.zeros((flat.size, m.shape[1]), m.dtype)
    for a, b in _blocks(len(x), block_size):
      mb = np.zeros((block_size * d, m.shape[1]), m.dtype)
      mb[:(b - a) * d] = m[a * d:b * d]
      acc += np.asarray(t_times_block(padded(x, a, b), mb))
    return acc
  return times, t_times, flat.size


def _orthonormal(y: np.ndarray) -> np.ndarray:
  """An orthonormal basis [m, min(m, k)] of the columns of y [m, k] (QR in float64)."""
  return np.linalg.qr(y.astype(np.float64))[0].astype(y.dtype)


def feature_factors(features_fn: Callable, params: PyTree, x_train: np.ndarray,
                    x_test: np.ndarray, *, rank: int, key: jax.Array, block_size: int = 100,
                    power_iters: int = 1, progress: bool = False
                    ) -> tuple[np.ndarray, np.ndarray]:
  """The leading directions of the backbone feature kernel G, by a randomised SVD of J_φ.

  G[i, j] = ∂φ(x_i)/∂w (∂φ(x_j)/∂w)ᵀ ([D, D] blocks; the head's columns of J_φ are zero, so
  w may hold it) is [N·D, N·D], too large to form at N·D in the tens of thousands; J_φ
  [N·D, P] is never held whole either: each pass over a set recomputes its row blocks and
  multiplies them by a [P, k] or [N·D, k] matrix (`_feature_jacobian_products`). With a
  Gaussian Ω [P, rank] from `key`: Y = J_φ Ω, then `power_iters` times Y = J_φ J_φᵀ orth(Y)
  (sharper directions where G's spectrum decays slowly), Q = orth(Y) [N·D, R], and the thin
  SVD J_φᵀ Q = V S Uᵀ (Halko, Martinsson & Tropp 2011, Algorithms 4.4 and 5.1). Then
    Z_train = Q U S:   Z_train Z_trainᵀ = Q Qᵀ G Q Qᵀ,
    Z_test = J_φ(x_test) V:   Z_test Z_trainᵀ = G[test, train] Q Qᵀ,
  so G's leading R directions, and G itself when rank >= N·D (Q Qᵀ = I). Cost: 2 + 2
  power_iters passes over the training set and one over the test set, each D backward
  passes per sample plus a [block·D, P] × [P, R] product per block.

  Args:
    features_fn: features_fn(params, x) -> [n, D], per-sample (BatchNorm frozen).
    params: w0; x_train: [N, ...]; x_test: [N_test, ...].
    rank: R, the directions found (at most min(N·D, P) are). Memory: a few [P, R] and
      [N·D, R] arrays besides one block's Jacobian.
    key: PRNG key of Ω.
    block_size: samples per Jacobian block.

  Returns:
    (z_train [N, D, R], z_test [N_test, D, R]), columns by decreasing singular value S.
  """
  if not (isinstance(rank, (int, np.integer)) and rank >= 1):
    raise ValueError(f'rank must be a positive integer, got rank={rank!r}')
  n, d = len(x_train), int(jax.eval_shape(features_fn, params, x_train[:1]).shape[-1])
  times, t_times, p = _feature_jacobian_products(features_fn, params, d, block_size)
  dtype = np.asarray(jax.tree.leaves(params)[0]).dtype
  bar = tqdm.tqdm(total=3 + 2 * power_iters, desc='feature kernel', disable=not progress,
                  leave=False)
  omega = np.asarray(jax.random.normal(key, (p, rank), dtype))
  y = times(x_train, omega)  # [N·D, rank]
  bar.update(1)
  for _ in range(power_iters):
    y = times(x_train, t_times(x_train, _orthonormal(y)))
    bar.update(2)
  q = _orthonormal(y)
  v, s, ut = np.linalg.svd(t_times(x_train, q), full_matrices=False)  # J_φᵀ Q = V S Uᵀ
  bar.update(1)
  z_train = (q @ ut.T * s).reshape(n, d, -1)
  z_test = times(x_test, v.astype(dtype)).reshape(len(x_test), d, -1)
  bar.update(1)
  bar.close()
  return z_train.astype(dtype), z_test


def feature_rank_errors(k_train_train: np.ndarray, features_train: np.ndarray,
                        head_kernel: np.ndarray, z_train: np.ndarray) -> np.ndarray:
  """The error of the exact-feature kernel at w0 at each rank r = 1..R, measured against Θ(w0).

  With f = Wᵀ φ + b, Θ(w0) = (ΦΦᵀ + 1) ⊗ I_C + (I ⊗ Wᵀ) G (I ⊗ W); keeping Z's first r
  columns gives Θ_r with G ≈ Z_r Z_rᵀ. Returns ‖Θ_r - Θ(w0)‖_F / ‖Θ(w0) - (ΦΦᵀ + 1) ⊗ I_C‖_F:
  relative to the backbone part, the part Z must explain (relative to all of Θ(w0) it is
  small whenever the fresh head's part dominates, however poor Z is). 1 at r = 0; accurate
  to about 1e-8 (from a difference of squares).

  Args:
    k_train_train: [N, N, C, C] Θ(w0); features_train: [N, D]; head_kernel: [D, C] W_0;
    z_train: [N, D, R].

  Returns:
    [R] errors, float64.
  """
  k = np.asarray(k_train_train, np.float64)
  n, _, c, _ = k.shape
  phi = np.asarray(features_train, np.float64)
  backbone = flatten(k - (phi @ phi.T + 1.0)[:, :, None, None] * np.eye(c))  # [N·C, N·C]
  a = np.einsum('ndr,dc->ncr', np.asarray(z_train, np.float64),
                np.asarray(head_kernel, np.float64)).reshape(n * c, -1)  # Θ_r's part: A_r A_rᵀ
  # ‖E - A_r A_rᵀ‖² = ‖E‖² - 2 Σ_{l<=r} a_lᵀ E a_l + Σ_{l,m<=r} (a_lᵀ a_m)², for every r at once.
  linear = np.cumsum(np.sum(a * (backbone @ a), 0))
  quadratic = np.diagonal(np.cumsum(np.cumsum((a.T @ a) ** 2, 0), 1))
  sq = np.sum(backbone**2)
  return np.sqrt(np.maximum(sq - 2.0 * linear + quadratic, 0.0) / sq)


def with_feature_factors(lin: Linearization, features_fn: Callable, params: PyTree,
                         x_train: np.ndarray, x_test: np.ndarray, *, rank: int, tol: float,
                         key: jax.Array, block_size: int = 100, power_iters: int = 1,
                         progress: bool = False) -> Linearization:
  """`lin` with what 'head_exact' needs: G's leading directions, the rank chosen by its error.

  `feature_factors` finds `rank` directions; `feature_rank_errors` measures the kernel at w0
  at each rank against lin's Θ(w0); tol > 0 keeps the fewest leading directions whose error
  is <= tol (all of them, with an error above tol, if none is), tol = 0 keeps all. The
  errors at every rank are kept in lin.feature_rank_errors ([rank], one per rank found),
  the rank kept is lin.feature_factors_train.shape[-1].

  Args:
    lin: a linearisation made with features_fn (ntk.linearize(..., features_fn=...)) at params.
    x_train, x_test, block_size, power_iters, progress: as `feature_factors`.
  """
  if not lin.head_aware:
    raise ValueError('with_feature_factors needs a linearisation made with features_fn')
  if not (isinstance(tol, (int, float)) and 0.0 <= tol < 1.0):
    raise ValueError(f'tol must be in [0, 1), got tol={tol!r}')
  z_train, z_test = feature_factors(features_fn, params, x_train, x_test, rank=rank, key=key,
                                    block_size=block_size, power_iters=power_iters,
                                    progress=progress)
  errors = feature_rank_errors(lin.full_kernels()[0], lin.features_train, lin.head_kernel, z_train)
  met = np.flatnonzero(errors <= tol)
  keep = int(met[0]) + 1 if tol > 0 and len(met) else len(errors)
  return dataclasses.replace(lin, feature_factors_train=z_train[..., :keep],
                             feature_factors_test=z_test[..., :keep], feature_rank_errors=errors)


def nt_available() -> bool:
  """Whether neural-tangents imports here (it needs jax <= 0.5.x)."""
  try:
    import neural_tangents  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def nt_gradient_descent(k_train_train: np.ndarray, fx_train_0: np.ndarray, y_train: np.ndarray,
                        steps: np.ndarray, *, lr: float, momentum: float, loss: str,
                        k_test_train: np.ndarray | None = None,
                        fx_test_0: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The anchor library's own prediction: neural-tangents' `predict.gradient_descent`.

  Gradient flow dF/dt = −η Θ ∇_F L(F) on the linearised model (with momentum m,
  its continuous heavy-ball ODE, whose terminal velocity is η/(1−m)), solved by
  nt's ODE solver: no minibatch noise, no weight decay. t is in SGD steps.

  Args:
    k_train_train: [N, N, C, C], or a class-traced [N, N]; fx_train_0: [N, C];
      y_train: [N] int labels; steps: [E] times in SGD steps.
    lr, momentum: η and m (0: plain gradient flow); loss: 'cross_entropy' or 'mse',
      as the mean over samples (losses.loss).
    k_test_train: [N_test, N, C, C] (or [N_test, N]); fx_test_0: [N_test, C].

  Returns:
    (fx_train [E, N, C], fx_test [E, N_test, C]); fx_test has N_test = 0 without
    a test set.
  """
  import neural_tangents as nt  # pylint: disable=g-import-not-at-top
  n, c = np.shape(fx_train_0)
  dtype = np.asarray(fx_train_0).dtype
  labels = jnp.asarray(y_train)
  mean_loss = lambda fx, _: jnp.mean(losses.loss(loss, fx, labels))
  onehot = jax.nn.one_hot(labels, c, dtype=dtype)
  trace_axes = (-1,) if np.ndim(k_train_train) == 2 else ()
  predict_fn = nt.predict.gradient_descent(mean_loss, jnp.asarray(k_train_train, dtype), onehot,
                                           learning_rate=lr, momentum=momentum or None,
                                           trace_axes=trace_axes)
  t = jnp.asarray(steps, dtype)
  if k_test_train is None or not len(k_test_train):
    return np.asarray(predict_fn(t, jnp.asarray(fx_train_0))), np.zeros((len(t), 0, c), dtype)
  fx, fxt = predict_fn(t, jnp.asarray(fx_train_0), jnp.asarray(fx_test_0, dtype),
                       jnp.asarray(k_test_train, dtype))
  return np.asarray(fx), np.asarray(fxt)
