"""SGD on the linearised model, in function space: pure jax on arrays, knows no model.

Notation (DESIGN §3): kernel Θ `k_train_train` [N, N, C, C], outputs F [N, C],
residuals r_i = ∂ℓ/∂f_i, held-out outputs F_test [N_test, C] moved by
`k_test_train` [N_test, N, C, C]. Time is in SGD steps throughout.

- `simulate_sgd`: the exact minibatch simulator (§3.1). One step on batch S_k
  moves F by -η_k (G + momentum terms), G = (1/B) Σ_{i∈S_k} Θ[:, i] r_i
  (+ λ (F - F_0 + J w0) with weight decay); exact for the linear model.
- `simulate_sde`: the paper's SDE (§3.2), Euler–Maruyama over many paths.
- `simulate_full_batch` and `mse_closed_form`: the deterministic limits.
- `low_rank`, `low_rank_within`, `truncation_bounds`: Θ ≈ U_k Λ_k U_kᵀ, which
  the three simulators above take in place of the dense kernel (§3.6).
- `simulate_head_aware` and `simulate_head_exact`: the head trained exactly, the
  features linearised, under an isotropic or the whole feature kernel (the isotropic
  one optionally rescaled by the simulated features' growth).
- `lr_limit`: the learning rate above which each of them diverges.

Outputs are curves recorded every `eval_every` steps, step 0 included.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse.linalg

from ntk_time import devices
from ntk_time import losses


def _metrics(loss, f, y):
  return jnp.mean(losses.loss(loss, f, y)), jnp.mean((jnp.argmax(f, -1) == y).astype(f.dtype))


def _curves(loss, f, y, ft, yt):
  tl, ta = _metrics(loss, f, y)
  if ft.shape[0]:
    vl, va = _metrics(loss, ft, yt)
  else:
    vl = va = jnp.full((), jnp.nan, f.dtype)
  return {'train_loss': tl, 'train_acc': ta.astype(f.dtype), 'test_loss': vl,
          'test_acc': jnp.asarray(va, f.dtype)}


def _columns(k):
  """[N1, N2, C, C] -> [N2, C, N1·C]: entry [j, d] is the column Θ[:, j, :, d], flattened.

  The simulators read Θ by columns of the batch samples; this layout makes each
  such column one contiguous row, so a minibatch is a row gather and a full
  move is one matrix product. A class-traced K [N1, N2] (Θ = K ⊗ I_C) becomes
  Kᵀ [N2, N1], its columns as rows.
  """
  k = np.asarray(k)
  if k.ndim == 2:
    return k.T
  n1, n2, c, _ = k.shape
  return k.transpose(1, 3, 0, 2).reshape(n2, c, n1 * c)


def _flat(k):
  n1, n2, c, _ = np.shape(k)
  return np.asarray(k).transpose(0, 2, 1, 3).reshape(n1 * c, n2 * c)


@functools.lru_cache(maxsize=64)
def _paths(fn, **static):
  """fn(one, shared, **static) vmapped over `one`'s leading axis (orders or paths): one
  function object per (fn, static), so that its jit is traced and compiled once per shape
  rather than once per simulation (a fresh vmap recompiled every configuration of a grid)."""
  return jax.vmap(functools.partial(fn, **static), in_axes=(0, None))


def _stack(first, rest):
  return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, rest)


# The jitted simulators take their arrays as a few named pytrees, so that
# `jax.vmap(..., in_axes=(0, None))` maps the batched pytree (batch orders or
# paths) over the shared one whatever fields they have: a new argument is a new
# field, and cannot shift which arrays are mapped.


class SimArrays(NamedTuple):
  """The arrays of one linearisation, shared by every path; zeros for what is absent.

  Kernels in the layout of `_prepare`: by columns [N, C, N'·C] for the minibatch
  simulator; flat [N'·C, N·C], or a class-traced K [N', N], for the SDE.
  """
  k_train_train: jax.Array  # Θ[train, train], laid out
  fx_train_0: jax.Array     # [N, C] F_0
  y_train: jax.Array        # [N] int
  jw0_train: jax.Array      # [N, C] J w0 (weight decay)
  k_test_train: jax.Array   # Θ[test, train], laid out (N_test may be 0)
  fx_test_0: jax.Array      # [N_test, C]
  y_test: jax.Array         # [N_test] int
  jw0_test: jax.Array       # [N_test, C]


class LowRank(NamedTuple):
  """Θ ≈ U Λ Uᵀ, the leading eigenpairs of a train kernel (`low_rank`); the simulators
  take it in place of k_train_train.

  Of an [N, N, C, C] kernel: U [N, C, k], orthonormal columns as [N·C, k] (index
  i·C + c). Of a class-traced K [N, N]: V [N, k], and Θ ≈ (V Λ Vᵀ) ⊗ I_C, rank k·C.
  """
  eigvals: np.ndarray  # [k] Λ, descending
  eigvecs: np.ndarray  # [N, C, k] U, or [N, k] V


class LowRankArrays(NamedTuple):
  """SimArrays with Θ ≈ U Λ Uᵀ (`_low_rank_moves`); zeros for what is absent."""
  eigvecs: jax.Array       # [N, C, k] U, or [N, k] V (class-traced)
  eigvals: jax.Array       # [k] Λ
  test_eigvecs: jax.Array  # [N_test, C, k] Θ[test, train] U, or [N_test, k] K[test, train] V
  fx_train_0: jax.Array    # [N, C] F_0
  y_train: jax.Array       # [N] int
  jw0_train: jax.Array     # [N, C] J w0 (weight decay)
  fx_test_0: jax.Array     # [N_test, C]
  y_test: jax.Array        # [N_test] int
  jw0_test: jax.Array      # [N_test, C]


class HeadArrays(NamedTuple):
  """The arrays of the head-aware models, shared by every order.

  The feature kernel G comes in one of two forms, told apart by k_phi's rank:
  `simulate_head_aware`'s isotropic K_φ [N, N] (G = K_φ ⊗ I_D), with k_phi_test
  [N, N_test]; or `simulate_head_exact`'s factor Z [N, D, R] (G ≈ Z Zᵀ), with
  k_phi_test the test factor [N_test, D, R].
  """
  k_phi: jax.Array               # [N, N] feature kernel K_φ, or the factor Z [N, D, R]
  features_train_0: jax.Array    # [N, D] φ(0)
  y_train: jax.Array             # [N] int
  jw0_features_train: jax.Array  # [N, D] (∂φ/∂θ) θ_0 (weight decay)
  k_phi_test: jax.Array          # [N, N_test] K_φ[test, train]ᵀ; or Z_test [N_test, D, R]
  features_test_0: jax.Array     # [N_test, D]
  y_test: jax.Array              # [N_test] int
  jw0_features_test: jax.Array   # [N_test, D]
  head_kernel: jax.Array         # [D, C] W_0
  head_bias: jax.Array           # [C] b_0


class SGDHyper(NamedTuple):
  """Hyper-parameters of the minibatch simulators, shared by every order."""
  lrs: jax.Array           # [T] η_k
  momentum: jax.Array      # [] m
  weight_decay: jax.Array  # [] λ


class SDEPath(NamedTuple):
  """One SDE path: its key and its hyper-parameters (batched: a leading [S] axis)."""
  key: jax.Array           # PRNG key
  lr_sum: jax.Array        # [T/dt] Σ η̃_k over each Euler–Maruyama step
  lr_sq: jax.Array         # [T/dt] Σ η̃_k² over each Euler–Maruyama step
  noise: jax.Array         # [] √(c/(B N))
  weight_decay: jax.Array  # [] λ
  lr_each: jax.Array       # [T/dt, dt] η̃_k of each SGD step ('epoch' sampling)
  epoch_len: jax.Array     # [] int E = ⌊N/B⌋, SGD steps per epoch ('epoch' sampling)
  rho: jax.Array           # [] B/(N - B): minus the correlation of two steps of an epoch


def _column_moves(a, x, idx=None):
  """Θ[:, S] x and Θ[test, S] x for SimArrays by columns: [N, C], [N_test, C].

  x: [|S|, C] on the samples S = idx ([B] int; None: all N).
  """
  kb = a.k_train_train if idx is None else a.k_train_train[idx]
  kbt = a.k_test_train if idx is None else a.k_test_train[idx]
  if kb.ndim == 2:  # K ⊗ I_C: K[:, S] r_S, C² times less kernel read per step
    return kb.T @ x, kbt.T @ x
  return (jnp.einsum('bcm,bc->m', kb, x).reshape(a.fx_train_0.shape),
          jnp.einsum('bcm,bc->m', kbt, x).reshape(a.fx_test_0.shape))


def _low_rank_moves(a, x, idx=None):
  """Θ_k[:, S] x and Θ[test, train] U Uᵀ[:, S] x for LowRankArrays: [N, C], [N_test, C].

  x: [|S|, C] on the samples S = idx ([B] int; None: all N). The coordinates
  Uᵀ[:, S] x are shared by both moves: O((|S| + N + N_test)·C·k) in all.
  """
  u = a.eigvecs if idx is None else a.eigvecs[idx]
  if u.ndim == 2:  # (V Λ Vᵀ) ⊗ I_C: coordinates [k, C], the classes apart
    z = u.T @ x
    return a.eigvecs @ (a.eigvals[:, None] * z), a.test_eigvecs @ z
  z = jnp.einsum('nck,nc->k', u, x)
  return (jnp.einsum('nck,k->nc', a.eigvecs, a.eigvals * z),
          jnp.einsum('nck,k->nc', a.test_eigvecs, z))


@functools.partial(jax.jit, static_argnames=('loss', 'eval_every', 'nesterov', 'full_batch'))
def _sgd_one(order, shared, *, loss, eval_every, nesterov, full_batch=False):
  """One batch order [T, B]; shared = (SimArrays by columns or LowRankArrays, SGDHyper).

  full_batch: every sample in every step (the order only counts the steps), as
  one product with the whole kernel rather than a gather of all its columns.
  """
  a, hp = shared
  fx0, y, jw0 = a.fx_train_0, a.y_train, a.jw0_train
  fxt0, yt, jw0t = a.fx_test_0, a.y_test, a.jw0_test
  lrs, momentum, weight_decay = hp.lrs, hp.momentum, hp.weight_decay
  moves = _low_rank_moves if isinstance(a, LowRankArrays) else _column_moves
  steps, _ = order.shape

  def update(f, u, g, lr):  # one optax step of f with velocity u and gradient g
    u = momentum * u + g
    return f - lr * (g + momentum * u if nesterov else u), u

  # The held-out outputs do not feed back, and their update is linear: F_test - F_test,0
  # + J_test w0 = e + Θ[test, train] E, with e [N_test, C] the part the weight decay alone
  # moves and E [N, C] the same update driven by the scattered minibatch residuals. The
  # held-out rows are then read once per evaluation rather than per step.
  def test_outputs(e, acc):
    return fxt0 - jw0t + e + moves(a, acc)[1]

  def step(carry, inp):
    f, u, e, ue, acc, u_acc = carry
    idx, lr = inp
    if full_batch:
      idx, r = None, losses.residual(loss, f, y)  # [N, C]
      x = r / r.shape[0]
    else:
      r = losses.residual(loss, f[idx], y[idx])  # [B, C]
      x = jnp.zeros_like(f).at[idx].add(r / r.shape[0])
    g = moves(a, r, idx)[0] / r.shape[0] + weight_decay * (f - fx0 + jw0)
    f, u = update(f, u, g, lr)
    e, ue = update(e, ue, weight_decay * e, lr)
    acc, u_acc = update(acc, u_acc, x + weight_decay * acc, lr)
    return (f, u, e, ue, acc, u_acc), None

  def chunk(carry, inp):
    carry, _ = jax.lax.scan(step, carry, inp)
    f, _, e, _, acc, _ = carry
    return carry, _curves(loss, f, y, test_outputs(e, acc), yt)

  zeros = jnp.zeros_like(fx0)
  init = (fx0, zeros, jw0t, jnp.zeros_like(fxt0), zeros, zeros)
  xs = (order.reshape(steps // eval_every, eval_every, -1),
        lrs.reshape(steps // eval_every, eval_every))
  (f, _, e, _, acc, _), rest = jax.lax.scan(chunk, init, xs)
  curves = _stack(_curves(loss, fx0, y, fxt0, yt), rest)
  return curves, f, test_outputs(e, acc)


def _prepare(k_train_train, fx_train_0, y_train, jw0_train, k_test_train, fx_test_0, y_test,
             jw0_test, columns):
  """The simulators' arrays, zeros for what is absent; kernels by columns, flat or low-rank.

  columns=True: `_columns` layout [N, C, N'·C] (class-traced: Kᵀ [N, N']), for
  minibatch row gathers.
  columns=False: flat [N'·C, N·C] (index i·C + c), for full matrix-vector products;
  class-traced kernels K [N', N] stay as they are.
  A LowRank k_train_train gives LowRankArrays, for either.
  """
  fx0 = jnp.asarray(fx_train_0)
  n, c = fx0.shape
  dtype = fx0.dtype
  jw0 = jnp.zeros_like(fx0) if jw0_train is None else jnp.asarray(jw0_train, dtype)
  if k_test_train is None:
    fxt0 = jnp.zeros((0, c), dtype)
    yt, jw0t = jnp.zeros((0,), jnp.int32), jnp.zeros((0, c), dtype)
  else:
    fxt0, yt = jnp.asarray(fx_test_0, dtype), jnp.asarray(y_test)
    jw0t = jnp.zeros_like(fxt0) if jw0_test is None else jnp.asarray(jw0_test, dtype)
  common = dict(fx_train_0=fx0, y_train=jnp.asarray(y_train), jw0_train=jw0, fx_test_0=fxt0,
                y_test=yt, jw0_test=jw0t)
  if isinstance(k_train_train, LowRank):
    return LowRankArrays(**_low_rank_kernels(k_train_train, k_test_train, n, c, dtype), **common)
  traced = np.ndim(k_train_train) == 2  # class-traced: Θ = K ⊗ I_C, kept as K
  layout = _columns if columns else _flat
  if not columns and traced:
    layout = np.asarray
  if k_test_train is None:
    if columns:
      k_st = jnp.zeros((n, 0) if traced else (n, c, 0), dtype)
    else:
      k_st = jnp.zeros((0, n if traced else n * c), dtype)
  else:
    k_st = jnp.asarray(layout(k_test_train), dtype)
  return SimArrays(k_train_train=jnp.asarray(layout(k_train_train), dtype), k_test_train=k_st,
                   **common)


def _low_rank_kernels(basis, k_test_train, n, c, dtype):
  """LowRankArrays' kernel fields: U, Λ and Θ[test, train] U (one product, O(N_test·C·N·C·k))."""
  v = np.asarray(basis.eigvecs)
  rank = v.shape[-1]
  traced = v.ndim == 2
  expected = (n, rank) if traced else (n, c, rank)
  if v.shape != expected or np.shape(basis.eigvals) != (rank,):
    raise ValueError(f'LowRank eigvecs {v.shape} and eigvals {np.shape(basis.eigvals)} do not '
                     f'fit outputs [N, C] = {(n, c)}: expected eigvecs {expected}')
  u = jnp.asarray(v, dtype)
  if k_test_train is None:
    tu = jnp.zeros((0,) + v.shape[1:], dtype)
  elif np.ndim(k_test_train) != (2 if traced else 4):
    raise ValueError(f'k_test_train of shape {np.shape(k_test_train)} with a basis of '
                     f"{'a class-traced' if traced else 'an [N, N, C, C]'} kernel")
  elif traced:
    tu = jnp.asarray(k_test_train, dtype) @ u
  else:
    tu = (jnp.asarray(_flat(k_test_train), dtype) @ u.reshape(n * c, rank)).reshape(-1, c, rank)
  return dict(eigvecs=u, eigvals=jnp.asarray(basis.eigvals, dtype), test_eigvecs=tu)


SDE_SAMPLINGS = ('iid', 'epoch')  # the minibatch models of simulate_sde's noise


def _check_eval(steps, eval_every):
  if steps % eval_every:
    raise ValueError(f'eval_every={eval_every} must divide the horizon steps={steps}')


def simulate_sgd(orders, lrs, k_train_train, fx_train_0, y_train, *, loss, eval_every,
                 momentum=0.0, nesterov=False, weight_decay=0.0, jw0_train=None,
                 k_test_train=None, fx_test_0=None, y_test=None, jw0_test=None,
                 _full_batch=False):
  """Exact SGD on the linearised model for several batch orders at once.

  Args:
    orders: [S, T, B] int minibatch indices (S orders, T steps).
    lrs: [T] learning rate η_k of each step.
    k_train_train: [N, N, C, C]; fx_train_0: [N, C]; y_train: [N] int labels.
      Or a class-traced K [N, N] (and k_test_train [N_test, N]) for Θ = K ⊗ I_C,
      simulated without expanding it (C² times less kernel read per step).
      Or a LowRank of either (`low_rank`, with the matching k_test_train):
      Θ ≈ U Λ Uᵀ, O((B + N + N_test)·C·k) a step.
    loss: 'cross_entropy' or 'mse'.
    eval_every: record curves every this many steps (divides T).
    momentum, nesterov, weight_decay: as optax.sgd / add_decayed_weights.
    jw0_train: [N, C] J w0, needed for weight decay (zeros if None).
    k_test_train: [N_test, N, C, C]; fx_test_0: [N_test, C]; y_test: [N_test];
      jw0_test: [N_test, C]. Optional held-out set.

  Returns:
    (curves, fx_train_T, fx_test_T): curves maps 'train_loss', 'train_acc',
    'test_loss', 'test_acc' to [S, T/eval_every + 1] arrays; fx_*_T: [S, N, C],
    [S, N_test, C] final outputs.
  """
  orders = jnp.asarray(orders)
  _check_eval(orders.shape[1], eval_every)
  arrays = _prepare(k_train_train, fx_train_0, y_train, jw0_train, k_test_train, fx_test_0, y_test,
                    jw0_test, columns=True)
  dtype = arrays.fx_train_0.dtype
  hyper = SGDHyper(lrs=jnp.asarray(lrs, dtype), momentum=jnp.asarray(momentum, dtype),
                   weight_decay=jnp.asarray(weight_decay, dtype))
  run = _paths(_sgd_one, loss=loss, eval_every=eval_every, nesterov=bool(nesterov),
               full_batch=_full_batch)
  return jax.device_get(devices.map_leading(run, orders, (arrays, hyper)))


def simulate_full_batch(lrs, k_train_train, fx_train_0, y_train, **kwargs):
  """The deterministic limit B = N: `simulate_sgd` with every sample in every step.

  Same arguments as `simulate_sgd` without `orders`; returns its outputs for
  one path (leading axis of size 1).
  """
  steps = np.zeros((1, len(lrs), 1), np.int32)  # only counts the steps
  return simulate_sgd(steps, lrs, k_train_train, fx_train_0, y_train, _full_batch=True, **kwargs)


def _epoch_noise(key, step, s_sum, epoch_len, rho, dtype, n):
  """The sample-weight noise of SGD step `step` given s_sum, its epoch's sum so far.

  Over an epoch of E steps the noises x_1..x_E (each N(0, I_N) before the
  centring P) have correlation -ρ between any two steps, ρ = B/(N - B), as the
  sample weights of a reshuffled epoch do; drawn one after the other, x_p given
  the p earlier ones is Gaussian with mean -ρ/(1 - ρ(p-1)) Σ_{<p} x and
  variance 1 - ρ² p/(1 - ρ(p-1)) (0 for the last step when B divides N: the
  epoch's noise then sums to zero). Returns (x, new epoch sum).
  """
  p = step % epoch_len
  s_sum = jnp.where(p == 0, jnp.zeros_like(s_sum), s_sum)
  denom = 1.0 - rho * (p - 1)
  var = jnp.maximum(1.0 - rho**2 * p / denom, 0.0)
  z = jax.random.normal(jax.random.fold_in(key, step), (n,), dtype)
  x = -rho / denom * s_sum + jnp.sqrt(var) * z
  return x, s_sum + x


def _flat_moves(a, x):
  """Θ x and Θ[test, train] x for SimArrays with flat (or class-traced) kernels, x [N, C]:
  [N, C], [N_test, C]."""
  k_tt, k_st = a.k_train_train, a.k_test_train
  if k_tt.shape[1] == x.shape[0]:  # K ⊗ I_C: K (r ⊙ w), C times cheaper than the full product
    return k_tt @ x, k_st @ x
  return (k_tt @ x.reshape(-1)).reshape(x.shape), (k_st @ x.reshape(-1)).reshape(a.fx_test_0.shape)


@functools.partial(jax.jit, static_argnames=('loss', 'eval_every', 'dt', 'sampling'))
def _sde_one(path, arrays, *, loss, eval_every, dt, sampling):
  """One path (SDEPath) on the shared SimArrays (flat or class-traced kernels) or LowRankArrays."""
  key, lr_sum, lr_sq = path.key, path.lr_sum, path.lr_sq
  noise, weight_decay = path.noise, path.weight_decay
  a = arrays
  fx0, y, jw0 = a.fx_train_0, a.y_train, a.jw0_train
  fxt0, yt, jw0t = a.fx_test_0, a.y_test, a.jw0_test
  moves = _low_rank_moves if isinstance(a, LowRankArrays) else _flat_moves
  n = fx0.shape[0]
  n_steps = lr_sum.shape[0]

  # The held-out outputs do not feed back: with g = F_test - F_test,0 + J_test w0,
  # g' = (1 - a λ) g + Θ[test, train] x is linear, so g_t = p_t J_test w0 + Θ[test, train] s_t
  # with s' = (1 - a λ) s + x [N, C] and p' = (1 - a λ) p: one product with the held-out
  # rows per evaluation rather than per step (the unused one per step is dead code to XLA).
  def test_outputs(acc, p):
    return fxt0 - jw0t + p * jw0t + moves(a, acc)[1]

  def step(carry, inp):
    f, acc, p, s_sum = carry
    i, a_sum, a_sq, a_each = inp
    r = losses.residual(loss, f, y)  # [N, C]
    # Drift and noise both act through Θ on per-sample scalings of r, so one
    # matvec with Θ serves both: ΔF = Θ (r ⊙ w), no matrix square root.
    if sampling == 'iid':
      xi = jax.random.normal(jax.random.fold_in(key, i), (n,), f.dtype)
      xi = xi - jnp.mean(xi)  # P ξ: the minibatch move has zero total weight
      w = -a_sum / n + jnp.sqrt(a_sq) * noise * xi  # [N]
    else:  # Σ_k η̃_k x_k over the Euler step's SGD steps, x_k correlated within an epoch
      def sub(s_sum, q):
        x, s_sum = _epoch_noise(key, i * dt + q, s_sum, path.epoch_len, path.rho, f.dtype, n)
        return s_sum, x
      s_sum, xs = jax.lax.scan(sub, s_sum, jnp.arange(dt))
      xi = a_each @ xs
      w = -a_sum / n + noise * (xi - jnp.mean(xi))
    x = r * w[:, None]
    decay = 1 - a_sum * weight_decay
    f = f + moves(a, x)[0] - a_sum * weight_decay * (f - fx0 + jw0)
    return (f, decay * acc + x, decay * p, s_sum), None

  per_eval = eval_every // dt

  def chunk(carry, inp):
    carry, _ = jax.lax.scan(step, carry, inp)
    f, acc, p, _ = carry
    return carry, _curves(loss, f, y, test_outputs(acc, p), yt)

  idx = jnp.arange(n_steps)
  xs = jax.tree.map(lambda a: a.reshape((-1, per_eval) + a.shape[1:]),
                    (idx, lr_sum, lr_sq, path.lr_each))
  init = (fx0, jnp.zeros_like(fx0), jnp.ones((), fx0.dtype), jnp.zeros(n, fx0.dtype))
  (f, acc, p, _), rest = jax.lax.scan(chunk, init, xs)
  return _stack(_curves(loss, fx0, y, fxt0, yt), rest), f, test_outputs(acc, p)


def simulate_sde(keys, lrs, k_train_train, fx_train_0, y_train, *, batch_size, loss, eval_every,
                 dt=1, momentum=0.0, weight_decay=0.0, jw0_train=None, k_test_train=None,
                 fx_test_0=None, y_test=None, jw0_test=None, population=None, nesterov=False,
                 sampling='iid'):
  """The paper's SDE, Euler–Maruyama, one path per key (DESIGN §3.2).

    dF = -(η̃/N) Θ r(F) dt + η̃ √(c/(B N)) Θ R(F) P dW_t,  η̃ = η/(1-m),
    c = (N-B)/(N-1),

  t in SGD steps. One Euler–Maruyama step covers `dt` SGD steps of the
  schedule: its drift uses Σ η̃_k and its noise √(Σ η̃_k²) over those steps,
  which for dt = 1 is exactly one step's mean and covariance.

  sampling='epoch' keeps each step's mean and covariance but correlates the
  noise of the steps of one epoch (E = ⌊N/B⌋ steps) as reshuffling does: the
  sample weights of two batches of an epoch have covariance -B/(N - B) times
  one batch's (each sample is drawn once an epoch), so an epoch's noise sums
  to zero when B divides N. The noise W is then a chain of Brownian bridges
  rather than a Brownian motion.

  The hyper-parameters may differ per path (lrs [S, T], batch_size, momentum,
  nesterov, weight_decay [S]), so that a whole grid of the same horizon is one
  simulation: its paths share every product with Θ (a matrix product rather
  than S matrix-vector products) and split over the devices together.

  Args:
    keys: [S] PRNG keys, one per path.
    lrs: [T] or [S, T] learning rates η_k (momentum enters as η_k / (1 - m)).
    k_train_train, fx_train_0, y_train, jw0_train, test arrays: as simulate_sgd;
      or the class-traced k_train_train [N, N] and k_test_train [N_test, N] for
      Θ = K ⊗ I_C, simulated without expanding it (C times cheaper per step);
      or a LowRank of either (`low_rank`): Θ ≈ U Λ Uᵀ, O((N + N_test)·C·k) a step.
    batch_size: B (or [S]), for the noise scale.
    loss, eval_every: as simulate_sgd; dt must divide eval_every.
    dt: SGD steps per Euler–Maruyama step.
    momentum: m (or [S]), used only through the effective learning rate.
    nesterov: Nesterov momentum (bool, or [S]) instead of heavy ball. The SDE is
      the first-order (small η̃ a) limit, where both have the same effective
      learning rate η̃ = η/(1-m): under a gradient g that changes by δ a step,
      heavy ball moves η (g/(1-m) - m δ/(1-m)²) and Nesterov η (g/(1-m) - m² δ/(1-m)²),
      while the SDE's drift moves η̃ g. With δ ~ a η̃ g on curvature a
      (≤ h λ_max/N + λ) that is a relative error O(m η̃ a/(1-m)) per step for
      heavy ball and m times that for Nesterov (from rest: a lag of m/(1-m) and
      m²/(1-m) steps), first order in η̃ a for both. So it does not change the
      simulation; it is taken so that the caller states it, and it matters for
      the divergence limits (`lr_limit`), which the SDE does not reproduce.
    weight_decay: λ (or [S]), added to the drift as λ (F - F_0 + J w0).
    population: N_full when the N given samples stand for a training set of
      N_full (a random subset of it, each sample standing for N_full/N): the
      drift (1/N) Σ over the subset is then the full set's mean move, the
      minibatch covariance is the same population covariance, and only c uses
      N_full, which B may exceed N but not N_full. None: the samples are the set.
      The epochs of sampling='epoch' are epochs of N_full.
    sampling: the minibatches the noise models, as `sgd.batch_order`: 'iid'
      (the paper's SDE: independent across steps) or 'epoch' (reshuffled once
      an epoch; above).

  Returns:
    (curves, fx_train_T, fx_test_T) as simulate_sgd, with S = len(keys) paths.
  """
  if sampling not in SDE_SAMPLINGS:
    raise ValueError(f'unknown sampling {sampling!r}; expected one of {SDE_SAMPLINGS}')
  s = len(keys)
  lrs = np.broadcast_to(np.asarray(lrs, np.float64), (s, np.shape(lrs)[-1]))
  steps = lrs.shape[1]
  _check_eval(steps, eval_every)
  if not (isinstance(dt, (int, np.integer)) and dt >= 1 and eval_every % dt == 0):
    raise ValueError(f'dt={dt!r} must be a positive integer dividing eval_every={eval_every}')
  fx0 = jnp.asarray(fx_train_0)
  n, c = fx0.shape
  dtype = fx0.dtype
  n_pop = n if population is None else population
  if n_pop < n:
    raise ValueError(f'population={population} is smaller than the {n} samples given')
  nesterov = np.broadcast_to(nesterov, (s,))
  if nesterov.dtype != np.bool_:
    raise ValueError(f'nesterov must be a bool or [S] bools, got nesterov={nesterov!r}')
  bs = np.broadcast_to(batch_size, (s,)).astype(np.float64)
  if not np.all((bs >= 1) & (bs <= n_pop)):
    raise ValueError(f'batch_size={batch_size} must be in 1..N={n_pop}')
  eff = lrs / (1.0 - np.broadcast_to(momentum, (s,))[:, None])
  lr_sum = eff.reshape(s, -1, dt).sum(2)
  lr_sq = (eff**2).reshape(s, -1, dt).sum(2)
  cfac = (n_pop - bs) / (n_pop - 1) if n_pop > 1 else np.zeros(s)
  noise = np.sqrt(cfac / (bs * n))
  epoch_len = (n_pop // bs).astype(np.int32)
  rho = np.where(bs < n_pop, bs / np.maximum(n_pop - bs, 1), 0.0)
  arrays = _prepare(k_train_train, fx_train_0, y_train, jw0_train, k_test_train, fx_test_0, y_test,
                    jw0_test, columns=False)
  run = _paths(_sde_one, loss=loss, eval_every=eval_every, dt=int(dt), sampling=sampling)
  as_dtype = lambda x: jnp.asarray(x, dtype)
  paths = SDEPath(key=keys, lr_sum=as_dtype(lr_sum), lr_sq=as_dtype(lr_sq), noise=as_dtype(noise),
                  weight_decay=as_dtype(np.broadcast_to(weight_decay, (s,))),
                  lr_each=as_dtype(eff.reshape(s, -1, dt)), epoch_len=jnp.asarray(epoch_len),
                  rho=as_dtype(rho))
  return jax.device_get(devices.map_leading(run, paths, arrays))


def mse_closed_form(k_train_train, fx_train_0, y_train, lr, steps, *, discrete=False):
  """Training MSE loss of full-batch gradient descent, from the spectrum of Θ.

  Continuous time (the ODE dF/dt = -(η/N) Θ (F - Y)):
    L_t = (1/2N) Σ_k exp(-2 η λ_k t / N) (u_kᵀ (F_0 - Y))².
  discrete=True gives the exact discrete map F_{t+1} - Y = (I - ηΘ/N)(F_t - Y):
    L_t = (1/2N) Σ_k (1 - η λ_k / N)^{2t} (u_kᵀ (F_0 - Y))².

  Args:
    k_train_train: [N, N, C, C]; fx_train_0: [N, C]; y_train: [N] int.
    lr: η (use η/(1-m) for the momentum ODE); steps: [E] times in SGD steps.

  Returns:
    [E] losses (float64).
  """
  k = _flat(np.asarray(k_train_train, np.float64))
  f0 = np.asarray(fx_train_0, np.float64)
  n, c = f0.shape
  e0 = (f0 - np.eye(c)[np.asarray(y_train)]).reshape(-1)
  lam, u = np.linalg.eigh(0.5 * (k + k.T))
  energy = (u.T @ e0) ** 2
  t = np.asarray(steps, np.float64)[:, None]
  if discrete:
    decay = (1.0 - lr * lam / n)[None, :] ** (2 * t)
  else:
    decay = np.exp(-2.0 * lr * lam[None, :] * t / n)
  return (decay * energy[None, :]).sum(1) / (2 * n)


def _symmetric64(k_train_train):
  """The kernel as a symmetric float64 matrix [N·C, N·C] (a class-traced K [N, N] as is)."""
  flat = np.asarray(k_train_train, np.float64)
  flat = _flat(flat) if flat.ndim == 4 else flat
  return 0.5 * (flat + flat.T)


def low_rank(k_train_train, rank):
  """The leading `rank` eigenpairs of a train kernel: Θ ≈ U_k Λ_k U_kᵀ (DESIGN §3.6).

  Passed as k_train_train to `simulate_sgd`, `simulate_full_batch` or
  `simulate_sde`, it replaces every product with Θ by U Λ Uᵀ: the train outputs
  move only in span(U) (F - F_0 stays in it but for weight decay's λ J w0,
  which is applied in full, O(N·C) a step), and a step costs O((N + N_test)·C·k)
  instead of O((N + N_test)·C·N·C) for the SDE (drift U Λ Uᵀ r(F), noise
  U Λ Uᵀ R P ξ in the same product) and O((B + N + N_test)·C·k) instead of
  O((N + N_test)·C·B·C) for the minibatch simulator. The modes dropped are
  frozen: along them F keeps its initial value. `truncation_bounds` bounds the
  effect on the training loss, and `low_rank_within` picks the smallest rank
  for a tolerance.

  This is SGD on the linear model with its weight moves restricted to the span
  of J's top k right singular vectors W_k (J W_k W_kᵀ Jᵀ = U_k Λ_k U_kᵀ), so the
  held-out outputs move by that model's test kernel, J_test W_k W_kᵀ Jᵀ =
  Θ[test, train] U_k U_kᵀ: the coordinates Uᵀ x of each step's move, times
  Θ[test, train] U_k [N_test·C, k] formed once. That costs O(N_test·C·k) a step
  and keeps train and test consistent (a test point equal to a training point
  gets its output); applying the full Θ[test, train] would let the test outputs
  move along modes the train outputs cannot. At rank = N·C (N for K) both are
  the dense kernels, and the simulators agree with the dense ones to rounding.

  Lanczos (scipy's eigsh, a fixed start vector as in ntk.check_kernel, so that
  the basis does not change from run to run) for rank <= N·C/16; above that a
  full eigendecomposition: on the demo kernel (N·C = 2,500) Lanczos took 2.3 s
  for k = 25, 9 s for 100 and 31 s for 200, as long as a full eigh (30 s).

  Args:
    k_train_train: [N, N, C, C], or a class-traced K [N, N] (then rank counts
      eigenpairs of K, each C of Θ).
    rank: k, 1..N·C (1..N for K).

  Returns:
    LowRank (float64).
  """
  flat = _symmetric64(k_train_train)
  rows = len(flat)
  if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= rows:
    raise ValueError(f'rank must be an integer in 1..{rows} (the rows of the kernel), got '
                     f'rank={rank!r}')
  if rank <= rows // 16:
    v0 = np.random.default_rng(0).normal(size=rows)
    lam, u = scipy.sparse.linalg.eigsh(flat, k=rank, which='LA', v0=v0)
  else:
    lam, u = np.linalg.eigh(flat)
    lam, u = lam[-rank:], u[:, -rank:]
  order = np.argsort(lam)[::-1]
  shape = np.shape(k_train_train)
  per_sample = shape[:1] if len(shape) == 2 else shape[:1] + shape[3:]
  return LowRank(eigvals=lam[order], eigvecs=u[:, order].reshape(per_sample + (rank,)))


def truncation_bounds(k_train_train, basis, fx_train_0, y_train, *, loss, lr_sum):
  """The bound β_j on the training-loss error of keeping only the leading j modes, j = 1..k.

    β_j = (S / N²) r_0ᵀ (Θ - Θ_j) r_0 = (S / N²) (r_0ᵀ Θ r_0 - Σ_{i<=j} λ_i (u_iᵀ r_0)²),

  r_0 = r(F_0) the initial residual, Θ_j the rank-j truncation, S = Σ_t η_t/(1-m)
  the effective learning rate summed over the horizon (the largest of a grid).
  In loss units, like predict.eps.

  MSE, full batch: a proven bound. The modes decouple (DESIGN §3.2), and the
  truncated map is the dense one with the modes i > j frozen at their start,
  so L̂_t - L_t = (1/2N) Σ_{i>j} (1 - d_i(t)) (u_iᵀ r_0)² with d_i(t) =
  exp(-2 λ_i Σ η̃/N) for the ODE or Π_s (1 - η̃_s λ_i/N)² for the discrete map;
  1 - e^{-x} <= x and 1 - Π_s (1 - a_s)² <= Σ_s 2 a_s (for every a_s in [0, 2],
  i.e. below the stability limit) give 0 <= L̂_t - L_t <= β_j for every t of
  the horizon.

  Cross-entropy: r is not linear in F, so the modes do not decouple (the frozen
  ones change the residuals the others see) and β_j is the first-order
  estimate of the same loss: the share of the initial descent rate
  -dL/dt = (η̃/N²) rᵀ Θ r that the dropped modes carry, (η̃/N²) r_0ᵀ (Θ - Θ_j) r_0,
  kept for the whole horizon. The residual shrinks as the loss converges, so it
  tends to overestimate; it is not a bound, and what it is worth is measured:
  against the dense simulators in tests/test_lowrank.py and on the demo kernel
  (experiments/bench.py, part 5). With minibatch noise (B < N) the truncation
  also drops the noise along the discarded modes, which β_j does not count.

  Args:
    k_train_train: the kernel `basis` came from ([N, N, C, C] or K [N, N]).
    basis: LowRank with k modes (`low_rank`).
    fx_train_0: [N, C]; y_train: [N] int.
    loss: 'cross_entropy' or 'mse'.
    lr_sum: S, in SGD steps times learning rate.

  Returns:
    [k] β_j for j = 1..k, non-increasing (float64).
  """
  r0 = np.asarray(losses.residual(loss, jnp.asarray(fx_train_0), jnp.asarray(y_train)), np.float64)
  flat = _symmetric64(k_train_train)
  lam, v = np.asarray(basis.eigvals, np.float64), np.asarray(basis.eigvecs, np.float64)
  if v.ndim == 2:  # (V Λ Vᵀ) ⊗ I_C: every class column through K
    total = float(np.sum(r0 * (flat @ r0)))
    kept = lam * np.sum((v.T @ r0) ** 2, axis=1)
  else:
    total = float(r0.reshape(-1) @ flat @ r0.reshape(-1))
    kept = lam * np.einsum('nck,nc->k', v, r0) ** 2
  n = len(r0)
  return lr_sum / n**2 * np.maximum(total - np.cumsum(kept), 0.0)


def low_rank_within(k_train_train, tol, *, fx_train_0, y_train, loss, lr_sum):
  """The smallest basis whose `truncation_bounds` is at most `tol` (in loss units).

  Tries ranks 16, 32, 64, ... by Lanczos (each a fresh `low_rank`: about twice
  the cost of the last one), then the whole kernel's eigendecomposition, which
  costs as much as any rank past Lanczos' range and meets any tolerance.

  Args:
    k_train_train, fx_train_0, y_train, loss, lr_sum: as truncation_bounds.
    tol: > 0.

  Returns:
    LowRank.
  """
  if not tol > 0:
    raise ValueError(f'tol must be > 0, got tol={tol!r}')
  shape = np.shape(k_train_train)
  rows = shape[0] * (shape[2] if len(shape) == 4 else 1)
  rank = min(16, rows)
  while True:
    basis = low_rank(k_train_train, rank)
    ok = np.flatnonzero(truncation_bounds(k_train_train, basis, fx_train_0, y_train, loss=loss,
                                          lr_sum=lr_sum) <= tol)
    if ok.size or rank == rows:
      j = ok[0] + 1 if ok.size else rank
      return LowRank(eigvals=basis.eigvals[:j], eigvecs=basis.eigvecs[..., :j])
    rank = 2 * rank if 2 * rank <= rows // 16 else rows


def clip_kernel(k_train_train, k_test_train, cap):
  """The kernel with every eigenvalue above `cap` lowered to `cap`: the catapult's kernel.

  Θ' = Θ - Σ_{λ_k > cap} (λ_k - cap) u_k u_kᵀ. It is the kernel of the linear model whose
  Jacobian is scaled by √(cap/λ_k) along the weight directions w_k = Jᵀ u_k/√λ_k of those
  modes, for every input alike, so the held-out rows follow from the same model:
  Θ'[test, train] = Θ[test, train] (I - Σ_{λ_k > cap} (1 - cap/λ_k) u_k u_kᵀ).

  The eigenpairs above cap come from `low_rank` at ranks 8, 16, 32, ... until the last one
  found is at most cap (or all are found).

  Args:
    k_train_train: [N, N, C, C], or a class-traced K [N, N] (its eigenvalues clipped, then
      Θ' = K' ⊗ I_C).
    k_test_train: [N_test, N, C, C] (or [N_test, N] with K), or None.
    cap: > 0, in the kernel's units (not divided by N).

  Returns:
    (k_train_train', k_test_train' or None, clipped): the kernels in the layouts given
    (float64) and the number of eigenvalues lowered.
  """
  if not cap > 0:
    raise ValueError(f'cap must be > 0, got cap={cap!r}')
  flat = _symmetric64(k_train_train)
  rows = len(flat)
  rank = min(8, rows)
  while True:
    basis = low_rank(k_train_train, rank)
    if basis.eigvals[-1] <= cap or rank == rows:
      break
    rank = min(2 * rank, rows)
  above = basis.eigvals > cap
  lam = basis.eigvals[above]
  u = np.asarray(basis.eigvecs, np.float64)[..., above]
  u = u.reshape(rows, -1)
  flat = flat - (u * (lam - cap)) @ u.T
  four = np.ndim(k_train_train) == 4
  shape = np.shape(k_train_train)
  unflat = lambda a, n1: (a.reshape(n1, shape[2], shape[1], shape[3]).transpose(0, 2, 1, 3)
                          if four else a)
  k_st = None
  if k_test_train is not None:
    st = _flat(np.asarray(k_test_train, np.float64)) if four else np.asarray(k_test_train,
                                                                              np.float64)
    st = st - ((st @ u) * (1.0 - cap / lam)) @ u.T
    k_st = unflat(st, np.shape(k_test_train)[0])
  return unflat(flat, shape[0]), k_st, int(above.sum())


@functools.partial(jax.jit, static_argnames=('loss', 'eval_every', 'nesterov',
                                             'feature_scale_power'))
def _head_aware_one(order, shared, *, loss, eval_every, nesterov, feature_scale_power=0.0):
  """One batch order [T, B]; shared = (HeadArrays, SGDHyper).

  feature_scale_power γ > 0: the feature kernel of every step is that of w0 rescaled by
  the features' own growth, G(t)[i, j] = s_i^γ s_j^γ G(0)[i, j] with s_i = ‖φ_i(t)‖/‖φ_i(0)‖
  (train and test points alike), O((N + N_test)·D) more a step.
  """
  a, hp = shared
  k_phi, phi0, y, jphi0 = a.k_phi, a.features_train_0, a.y_train, a.jw0_features_train
  k_phi_st, phit0, yt, jphit0 = a.k_phi_test, a.features_test_0, a.y_test, a.jw0_features_test
  w0, b0 = a.head_kernel, a.head_bias
  lrs, momentum, weight_decay = hp.lrs, hp.momentum, hp.weight_decay
  steps, _ = order.shape
  norm0, norm0_t = jnp.linalg.norm(phi0, axis=1), jnp.linalg.norm(phit0, axis=1)
  frob0 = jnp.linalg.norm(phi0)

  def step(carry, inp):
    (phi, phit, w, b), vel = carry
    idx, lr = inp
    bsz = idx.shape[0]
    r = losses.residual(loss, phi[idx] @ w + b, y[idx])  # [B, C]
    q = r @ w.T  # [B, D]: ∂ℓ_i/∂φ_i
    if feature_scale_power:  # G(t) = S G(0) S, S = diag(s^γ): scale the batch's q, then the moves
      scale = (jnp.linalg.norm(phi, axis=1) / norm0) ** feature_scale_power  # [N]
      scale_t = (jnp.linalg.norm(phit, axis=1) / norm0_t) ** feature_scale_power  # [N_test]
      q = q * scale[idx, None]
    if k_phi.ndim == 3:  # G ≈ Z Zᵀ: the backbone's move Zᵀ_S q_S [R], then every feature's
      dtheta = jnp.einsum('bdr,bd->r', k_phi[idx], q) / bsz
      move, move_t = k_phi @ dtheta, k_phi_st @ dtheta
    else:  # G = K_φ ⊗ I_D
      move, move_t = k_phi[idx].T @ q / bsz, k_phi_st[idx].T @ q / bsz
    if feature_scale_power:
      move, move_t = move * scale[:, None], move_t * scale_t[:, None]
    grads = (move + weight_decay * (phi - phi0 + jphi0),
             move_t + weight_decay * (phit - phit0 + jphit0),
             phi[idx].T @ r / bsz + weight_decay * w,
             jnp.mean(r, 0) + weight_decay * b)
    vel = jax.tree.map(lambda v, g: momentum * v + g, vel, grads)
    move = jax.tree.map(lambda v, g: g + momentum * v, vel, grads) if nesterov else vel
    state = jax.tree.map(lambda x, d: x - lr * d, (phi, phit, w, b), move)
    return (state, vel), None

  def curves(state):
    phi, phit, w, b = state
    return dict(_curves(loss, phi @ w + b, y, phit @ w + b, yt),
                feature_growth=jnp.linalg.norm(phi) / frob0)

  def chunk(carry, inp):
    carry, _ = jax.lax.scan(step, carry, inp)
    return carry, curves(carry[0])

  state0 = (phi0, phit0, w0, b0)
  init = (state0, jax.tree.map(jnp.zeros_like, state0))
  xs = (order.reshape(steps // eval_every, eval_every, -1),
        lrs.reshape(steps // eval_every, eval_every))
  carry, rest = jax.lax.scan(chunk, init, xs)
  phi, phit, w, b = carry[0]
  return _stack(curves(state0), rest), phi @ w + b, phit @ w + b


def simulate_head_aware(orders, lrs, k_phi, features_train_0, y_train, head_kernel, head_bias, *,
                        loss, eval_every, momentum=0.0, nesterov=False, weight_decay=0.0,
                        jw0_features_train=None, k_phi_test=None, features_test_0=None,
                        y_test=None, jw0_features_test=None, feature_scale_power=0.0):
  """Exact SGD on the head-aware (bilinear) model, for several batch orders at once.

  The plain method linearises f = Wᵀ φ(x; θ) + b in all parameters, which
  freezes the backbone's contribution W ᵀ (∂φ/∂θ)(∂φ/∂θ)ᵀ W to the kernel at the
  fresh head's W_0. Here only the features are linearised, φ_i = φ_i(0) + ∂φ_i/∂θ δθ,
  with the isotropic feature kernel ∂φ_i/∂θ (∂φ_j/∂θ)ᵀ ≈ K_φ[i, j] I_D, while the
  head W, b is trained exactly; the backbone part of the output kernel is then
  K_φ ⊗ W_tᵀ W_t and grows with the head, as it does in real fine-tuning. In
  function space one SGD step on batch S moves
    W <- W - η (1/B) Σ_S φ_i r_iᵀ,  b <- b - η (1/B) Σ_S r_i,
    φ_j <- φ_j - η (1/B) Σ_S K_φ[j, i] W r_i    (for training and test points),
  with momentum, Nesterov and weight decay (λ (φ - φ_0 + ∂φ/∂θ θ_0) on the
  features) as in `simulate_sgd`.

  feature_scale_power γ > 0 (method 'head_scaled') lets the feature kernel grow with the
  features it moves: each step uses K_φ(t)[i, j] = s_i^γ s_j^γ K_φ[i, j] with
  s_i = ‖φ_i(t)‖/‖φ_i(0)‖ of the simulated features (test points alike), PSD and K_φ at
  t = 0 (γ = 0 is `head_aware`). Why (DESIGN §3.5): under frozen BatchNorm the features
  grow (3-7× in real runs) and in a ReLU net, positively homogeneous in each layer's
  weights, ∂φ/∂θ_l scales as s/c_l when the layers' gains c_l multiply to φ's growth s.
  Growth carried by a scale at the top (the last BatchNorm's affine) scales every Jacobian
  below it by s: G ∝ s², γ = 1; L layers growing alike give G ∝ s^(2-2/L), γ = 1 - 1/L;
  G grows between s⁰ and s².

  Args:
    orders: [S, T, B]; lrs: [T].
    k_phi: [N, N] feature kernel; features_train_0: [N, D]; y_train: [N].
    head_kernel: [D, C] W_0; head_bias: [C] b_0.
    jw0_features_train: [N, D] (∂φ/∂θ) θ_0, for weight decay.
    k_phi_test: [N_test, N]; features_test_0: [N_test, D]; y_test; jw0_features_test.
    feature_scale_power: γ >= 0; > 0 needs every ‖φ_i(0)‖ > 0.

  Returns:
    (curves, fx_train_T, fx_test_T) as simulate_sgd; curves also has 'feature_growth'
    [S, T/eval_every + 1], the simulated ‖Φ_t‖_F/‖Φ_0‖_F on the training set.
  """
  if k_phi_test is not None:
    k_phi_test = np.asarray(k_phi_test).T  # [N, N_test]: rows by training sample
  return _simulate_head(orders, lrs, k_phi, k_phi_test, features_train_0, y_train, head_kernel,
                        head_bias, loss=loss, eval_every=eval_every, momentum=momentum,
                        nesterov=nesterov, weight_decay=weight_decay,
                        jw0_features_train=jw0_features_train, features_test_0=features_test_0,
                        y_test=y_test, jw0_features_test=jw0_features_test,
                        feature_scale_power=feature_scale_power)


def simulate_head_exact(orders, lrs, feature_factors, features_train_0, y_train, head_kernel,
                        head_bias, *, loss, eval_every, momentum=0.0, nesterov=False,
                        weight_decay=0.0, jw0_features_train=None, feature_factors_test=None,
                        features_test_0=None, y_test=None, jw0_features_test=None):
  """Exact SGD on the head-aware model with the whole feature kernel G, not its isotropic part.

  As `simulate_head_aware` (the head W, b trained exactly, the features φ linearised in the
  backbone θ), but with G[i, j] = ∂φ_i/∂θ (∂φ_j/∂θ)ᵀ [D, D] itself, given by a factor,
  G ≈ Z Zᵀ (ntk.feature_factors: G's leading R directions; exactly G at full rank). One SGD
  step on batch S moves W and b as there, and the features by
    φ_j <- φ_j - η (1/B) Σ_S G[j, i] W r_i = φ_j - η Z_j δ,  δ = (1/B) Σ_S Z_iᵀ W r_i [R]
  (δ: the backbone's move in the R directions; for training and test points), with
  momentum, Nesterov and weight decay as in `simulate_sgd`. At w0 its logit kernel is
  (ΦΦᵀ + 1) ⊗ I_C + (I ⊗ W_0ᵀ) Z Zᵀ (I ⊗ W_0): Θ(w0) itself at full rank, where the
  isotropic model matches Θ(w0) only in its class trace. It is then exact SGD on any net
  whose features are linear in the backbone's parameters. A step costs O(N·D·R).

  Args:
    orders: [S, T, B]; lrs: [T].
    feature_factors: [N, D, R] Z; features_train_0: [N, D]; y_train: [N].
    head_kernel: [D, C] W_0; head_bias: [C] b_0.
    jw0_features_train: [N, D] (∂φ/∂θ) θ_0, for weight decay.
    feature_factors_test: [N_test, D, R], with G[test, train] ≈ Z_test Zᵀ; features_test_0:
      [N_test, D]; y_test; jw0_features_test.

  Returns:
    (curves, fx_train_T, fx_test_T) as simulate_head_aware.
  """
  if np.ndim(feature_factors) != 3:
    raise ValueError(f'feature_factors must be [N, D, R], got shape {np.shape(feature_factors)}')
  return _simulate_head(orders, lrs, feature_factors, feature_factors_test, features_train_0,
                        y_train, head_kernel, head_bias, loss=loss, eval_every=eval_every,
                        momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        jw0_features_train=jw0_features_train, features_test_0=features_test_0,
                        y_test=y_test, jw0_features_test=jw0_features_test)


def _simulate_head(orders, lrs, k_phi, k_phi_test, features_train_0, y_train, head_kernel,
                   head_bias, *, loss, eval_every, momentum, nesterov, weight_decay,
                   jw0_features_train, features_test_0, y_test, jw0_features_test,
                   feature_scale_power=0.0):
  """Either head model on its HeadArrays; k_phi_test laid out as there, None: no test set."""
  orders = jnp.asarray(orders)
  _check_eval(orders.shape[1], eval_every)
  phi0 = jnp.asarray(features_train_0)
  n, d = phi0.shape
  if not feature_scale_power >= 0.0:
    raise ValueError(f'feature_scale_power must be >= 0, got {feature_scale_power!r}')
  if feature_scale_power:
    for name, f in (('features_train_0', phi0), ('features_test_0', features_test_0)):
      if f is not None and len(f) and not np.all(np.linalg.norm(np.asarray(f), axis=1) > 0):
        raise ValueError(f'feature_scale_power={feature_scale_power} rescales by ‖φ_i(t)‖/‖φ_i(0)‖,'
                         f' but {name} has a sample with ‖φ_i(0)‖ = 0')
  dtype = phi0.dtype
  zeros_or = lambda a, shape: jnp.zeros(shape, dtype) if a is None else jnp.asarray(a, dtype)
  if k_phi_test is None:
    k_st = jnp.zeros((0,) + np.shape(k_phi)[1:] if np.ndim(k_phi) == 3 else (n, 0), dtype)
    phit0, yt = jnp.zeros((0, d), dtype), jnp.zeros((0,), jnp.int32)
  else:
    k_st = jnp.asarray(k_phi_test, dtype)
    phit0, yt = jnp.asarray(features_test_0, dtype), jnp.asarray(y_test)
  arrays = HeadArrays(
      k_phi=jnp.asarray(k_phi, dtype), features_train_0=phi0, y_train=jnp.asarray(y_train),
      jw0_features_train=zeros_or(jw0_features_train, (n, d)), k_phi_test=k_st,
      features_test_0=phit0, y_test=yt, jw0_features_test=zeros_or(jw0_features_test, phit0.shape),
      head_kernel=jnp.asarray(head_kernel, dtype), head_bias=jnp.asarray(head_bias, dtype))
  hyper = SGDHyper(lrs=jnp.asarray(lrs, dtype), momentum=jnp.asarray(momentum, dtype),
                   weight_decay=jnp.asarray(weight_decay, dtype))
  run = _paths(_head_aware_one, loss=loss, eval_every=eval_every, nesterov=bool(nesterov),
               feature_scale_power=float(feature_scale_power))
  return jax.device_get(run(orders, (arrays, hyper)))


LIMIT_METHODS = ('replay', 'full_batch', 'head_aware', 'head_scaled', 'head_exact', 'sde',
                 'nt_gradient_descent', 'catapult')
# The catapult's upper limit on η a (a the curvature of lr_limit): Lewkowycz et al. 2020's
# two-layer linear (uv) model under MSE converges after a loss spike for 2 < η a < 4 (plain
# GD) and diverges above 4. With heavy ball (experiments/catapult_uv.py, n = 4,000, 2 seeds)
# the edge stays near 4 while the linear limit 2 (1 + m) rises: η a = 4.0 at m = 0, 4.1-4.4
# at 0.25, 4.3 at 0.5, 4.4-4.5 at 0.75 and 0.9. 4, the lowest at every m, is taken for all
# (and for Nesterov, not measured), so the window shrinks to 3.8 < η a < 4 at m = 0.9.
CATAPULT_EDGE = 4.0


def curvature_bound(loss):
  """Largest eigenvalue h of ∂²ℓ/∂f² over all f: 1 for MSE, 1/2 for cross-entropy.

  Cross-entropy's Hessian diag(p) - p pᵀ has λ_max ≤ 1/2 (reached at p = (½, ½, 0, ...)).
  """
  return 1.0 if losses.check(loss) == 'mse' else 0.5


def lr_limit(method, max_eig, n, loss, *, momentum=0.0, nesterov=False, weight_decay=0.0, dt=1):
  """The largest constant learning rate η at which `method` does not diverge.

  All are the stability limits of the simulated map on a quadratic whose
  curvature is at most a = h λ_max/N + λ (h = `curvature_bound(loss)`, λ the
  weight decay: the step on F - F_0 + J w0 is η (Θ/N ∇²ℓ + λ I) times it).
  For one mode x of curvature a:
  - gradient descent, x <- (1 - η a) x: η a < 2;
  - heavy ball (v <- m v + a x, x <- x - η v): z² - (1 + m - η a) z + m = 0 has
    both roots in the unit disc iff η a < 2 (1 + m);
  - Nesterov as optax (v <- m v + g, x <- x - η (g + m v)): the state matrix
    [[1 - η a (1 + m), -η m²], [a, m]] has trace 1 + m - η a (1 + m) and
    determinant m (1 - η a); Jury's conditions 1 + tr + det > 0, |det| < 1 give
    η a < 2 (1 + m)/(1 + 2 m) (the other, η a < (1 + m)/m, is weaker);
  - the SDE steps its drift by dt η̃ with η̃ = η/(1 - m), heavy ball or
    Nesterov alike: dt η a/(1 - m) < 2, i.e. η < 2 (1 - m)/(dt a), 19× below
    heavy ball's at m = 0.9. That is the limit of its drift (the mean of a
    path, for MSE); the noise adds variance that grows the second moment, so
    paths can diverge below it when B < N (measured: B = N/2 on a random
    kernel at 0.97×).

  What each limit means per method:
  - 'full_batch': exact for MSE. For cross-entropy the curvature is below
    h λ_max/N almost everywhere, so the limit is conservative; at m = 0 it is a
    proven sufficient condition (descent on a convex, (h λ_max/N)-smooth
    loss); at m > 0 it is the local quadratic bound at every point (a
    guarantee for a convex non-quadratic loss is η a < 2 (1 - m), Ghadimi,
    Feyzmahdavian & Johansson 2015).
  - 'replay' (minibatches): the full-batch limit, exact for B = N. For B < N it
    is the limit of the mean move under i.i.d. batches (`sgd.batch_order(...,
    sampling='iid')`, MSE: E[F_{k+1} | F_k] is the full-batch map), so above
    it the paths diverge; it is not sufficient: the batches' own curvature
    λ_max(Θ_SS)/B (up to λ_max(Θ)/B) can make paths diverge below it. Measured
    at B = N/2 (tests/test_limits.py): with m = 0.9 paths diverge at 0.97× of
    it even on a kernel with a flat dominant top mode (heavy ball's bound needs
    a coherent oscillation that minibatch noise breaks), and at m = 0 on a
    plain random kernel; with epoch reshuffling (batches of an epoch dependent,
    so not even the mean follows the full-batch map) paths at m = 0 on the
    flat-top kernel converged at 1.03×.
  - 'head_aware': the head-aware model is not a fixed quadratic (its kernel
    K_φ ⊗ WᵀW + (ΦΦᵀ + 1) ⊗ I_C changes with the head and the features), so
    the limit is that of its linearisation at w0, whose kernel is the logit
    NTK Θ(w0) passed as max_eig: it says whether the start is stable, not
    whether the run diverges. It is sharp with frozen features (a linear
    probe); with moving features, runs measured at 1.03× and 1.5× of it
    converged after a catapult (MSE, m = 0), and at m = 0.9 one diverged at
    0.97× as the kernel grew.
  - 'head_scaled', 'head_exact': likewise ('head_scaled' has head_aware's kernel at w0;
    head_exact's is Θ(w0) itself at full rank).
  - 'nt_gradient_descent': gradient flow, an ODE solved to tolerance, has no
    step to make unstable: inf.
  - 'catapult' (MSE): where a real net stops converging after the catapult,
    η a < CATAPULT_EDGE, or the linear limit where that is higher (m near 1).
    Cross-entropy: the 'replay' limit, as it simulates 'replay' there.

  Args:
    method: one of LIMIT_METHODS.
    max_eig: λ_max(Θ) (of [N, N, C, C], or of K for a class-traced kernel).
    n: N, the samples of the mean in the loss.
    loss: 'mse' or 'cross_entropy'.
    momentum: m in [0, 1); nesterov: optax's Nesterov instead of heavy ball.
    weight_decay: λ >= 0, as optax.add_decayed_weights.
    dt: SGD steps per Euler–Maruyama step ('sde' only; ignored otherwise).

  Returns:
    The limit on the (peak, constant) learning rate η; inf where the curvature is 0.
  """
  if method not in LIMIT_METHODS:
    raise ValueError(f'unknown method {method!r} for lr_limit; expected one of {LIMIT_METHODS}')
  if not 0.0 <= momentum < 1.0:
    raise ValueError(f'momentum must be in [0, 1), got momentum={momentum!r}')
  if not weight_decay >= 0.0:
    raise ValueError(f'weight_decay must be >= 0, got weight_decay={weight_decay!r}')
  if not (isinstance(dt, (int, np.integer)) and dt >= 1):
    raise ValueError(f'dt must be a positive integer, got dt={dt!r}')
  a = curvature_bound(loss) * max_eig / n + weight_decay
  if a <= 0.0 or method == 'nt_gradient_descent':
    return float('inf')
  if method == 'sde':
    return 2.0 * (1.0 - momentum) / (dt * a)
  if nesterov:
    linear = 2.0 * (1.0 + momentum) / ((1.0 + 2.0 * momentum) * a)
  else:
    linear = 2.0 * (1.0 + momentum) / a
  if method == 'catapult' and losses.check(loss) == 'mse':
    return max(CATAPULT_EDGE / a, linear)
  return linear
