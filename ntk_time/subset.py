"""Predicting a training set of N samples from the kernel of M ≪ N of them (DESIGN §3.4).

Two ways, both from a kernel `Θ_M` on a uniformly random M-subset:

* replica (any loss): the SDE on the M samples with `population=N`
  (`dynamics.simulate_sde`): each sample stands for N/M of the full set, so
  the drift (1/M) Σ is the full set's mean move and only the finite-population
  factor c = (N−B)/(N−1) and the batch size B come from the full run. It keeps
  the loss's non-linearity but has only M·C modes: the full set's N·C − M·C
  slowest modes are missing, so it tends to predict too fast a late decay.
* spectral (MSE): the non-zero eigenvalues of Θ_N = J Jᵀ are those of
  JᵀJ = Σ_i J_iᵀ J_i ≈ N E[J_iᵀ J_i], so λ_k/N hardly depends on N for the
  leading k. `extrapolate` splits each eigenvalue into a part that grows with
  the set and a floor that does not, keeps the leading modes, extends the
  spectrum and the residual energy per mode by power laws to N·C modes, and
  `simulate_modes` runs the full-N SGD dynamics on
  these modes: the exact mean of each mode plus SGD noise that couples them
  through the total loss (eigenvectors assumed delocalised over samples).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ntk_time import compat
from ntk_time import losses
from ntk_time import ntk
from ntk_time import sgd


def spectrum(k_train_train: np.ndarray, fx_train_0: np.ndarray, y_train: np.ndarray,
             loss: str = 'mse') -> tuple[np.ndarray, np.ndarray]:
  """Eigenvalues of Θ and the initial residual's energy in each eigenvector.

  Args:
    k_train_train: [M, M, C, C]; fx_train_0: [M, C]; y_train: [M].

  Returns:
    (λ [M·C] descending, clipped at 0; e_k = (u_kᵀ r_0)² [M·C]), r_0 the
    residual ∂ℓ/∂f at the initial outputs, index i·C + c.
  """
  theta = ntk.flatten(np.asarray(k_train_train, np.float64))
  lam, u = np.linalg.eigh(0.5 * (theta + theta.T))
  r0 = np.asarray(losses.residual(losses.check(loss), np.asarray(fx_train_0, np.float64),
                                  np.asarray(y_train)), np.float64).reshape(-1)
  return lam[::-1].clip(0.0), (u[:, ::-1].T @ r0) ** 2


def _power_law(k: np.ndarray, v: np.ndarray) -> tuple[float, float]:
  """(a, α) of v ≈ a k^{-α}, least squares on log-log, from log-spaced bin means."""
  edges = np.unique(np.geomspace(k[0], k[-1] + 1, 16).astype(int))
  centers, means = [], []
  for lo, hi in zip(edges[:-1], edges[1:]):
    sel = (k >= lo) & (k < hi)
    if sel.any() and np.mean(v[sel]) > 0:
      centers.append(np.exp(np.mean(np.log(k[sel]))))
      means.append(np.mean(v[sel]))
  if len(centers) < 2:
    raise ValueError('too few non-zero modes to fit the tail of the spectrum; use a larger M')
  slope, intercept = np.polyfit(np.log(centers), np.log(means), 1)
  return float(np.exp(intercept)), float(-slope)


def extrapolate(lam: np.ndarray, energy: np.ndarray, m: int, n: int, keep: float = 0.5,
                floor: float = 0.1) -> dict[str, np.ndarray | float]:
  """The spectrum and residual energies of the N-sample kernel, from an M-subset's.

  Eigenvalues: λ_k = M μ_k + κ, a part shared by the samples that grows with
  the set plus a floor κ that does not (a sample's own part of the kernel),
  estimated as the mean of the subset's last `floor` fraction of eigenvalues.
  The leading `keep` fraction of μ_k is taken as it is (rank k of the subset
  is rank k of the full set) and continued to N·C modes by a power law in k
  fitted on modes keep/10 … keep. Energies: the initial residual energy per
  sample does not depend on N, so the leading modes keep theirs (× N/M) and
  what the subset holds beyond them is spread over the full set's remaining
  modes with the power-law shape fitted on the same modes.

  Measured on a synthetic power-law problem (tests/test_subset.py): the
  predicted loss curve's error falls as M grows towards N; a floor on the
  energies as well (label noise) was tried and made it worse.

  Args:
    lam, energy: from `spectrum` on M samples ([M·C] each).
    m, n: subset and full training-set sizes (n >= m).
    keep, floor: fractions of the subset's modes, as above.

  Returns:
    {'lam': [N·C] eigenvalues of Θ_N, 'energy': [N·C] initial residual
    energies (their sum is N/M times the subset's), 'alpha', 'beta': exponents
    of μ_k ∝ k^-α and of the energy ∝ k^-β, 'lam_floor': κ, 'keep_modes'}.
  """
  if not (1 <= m <= n):
    raise ValueError(f'need 1 <= M <= N, got M={m}, N={n}')
  if not (0 < keep <= 1 and 0 < floor < 1):
    raise ValueError(f'keep must be in (0, 1] and floor in (0, 1), got {keep!r}, {floor!r}')
  kc = len(lam)
  num_classes = kc // m
  k_keep = max(2, int(keep * kc))
  kappa = float(np.mean(lam[kc - max(1, int(floor * kc)):]))
  mu = np.maximum(lam - kappa, 0.0) / m
  k = np.arange(1, kc + 1)
  fit = slice(max(0, k_keep // 10 - 1), k_keep)
  a, alpha = _power_law(k[fit], mu[fit])
  b, beta = _power_law(k[fit], energy[fit] / m)
  k_full = np.arange(1, n * num_classes + 1)
  mu_n = a * k_full ** -alpha
  mu_n[:k_keep] = mu[:k_keep]
  shape = k_full[k_keep:] ** -beta
  rest = n / m * float(energy[k_keep:].sum())
  energy_n = np.concatenate([n / m * energy[:k_keep],
                             shape * (rest / shape.sum()) if shape.size else shape])
  return {'lam': n * mu_n + kappa, 'energy': energy_n, 'alpha': alpha, 'beta': beta,
          'lam_floor': kappa, 'keep_modes': k_keep}


def simulate_modes(lam: np.ndarray, energy: np.ndarray, hp: sgd.SGD, *, n: int, num_classes: int,
                   eval_every: int) -> tuple[np.ndarray, np.ndarray]:
  """Expected MSE training loss of linearised SGD on a set of N samples, mode by mode.

  In mode k the residual x = u_kᵀ r sees the gradient g = h x + ξ, h = λ_k/N,
  and heavy-ball momentum (optax: v ← m v + g, x ← x − η v). The second moments
  X = E[x²], V = E[v²], Z = E[x v] follow exactly,

    V' = m²V + h²X + 2mhZ + σ²,   X' = (1−ηh)²X + η²m²V − 2ηm(1−ηh)Z + η²σ²,
    Z' = (1−ηh)(mZ + hX) − ηm²V − ηmhZ − ησ²,

  with σ² = (c/B) λ_k² (‖r‖²/C − X) / N² the minibatch covariance projected on
  u_k (c = (N−B)/(N−1), ‖r‖² = Σ_k X_k, eigenvectors spread evenly over the
  samples). L = Σ_k X_k / (2N). With B = N it is exactly (momentum) gradient
  descent on the linearised model.

  Args:
    lam, energy: [K] eigenvalues of Θ_N and initial energies (u_kᵀ r_0)².
    hp: the SGD configuration (no weight decay, no Nesterov).
    n, num_classes: N and C of the full set.
    eval_every: steps between returned points.

  Returns:
    (steps [E], loss [E]); a diverging configuration gives a non-finite loss.
  """
  hp.validate(n)
  if hp.weight_decay or hp.nesterov:
    raise ValueError('simulate_modes models plain heavy-ball SGD; got '
                     f'weight_decay={hp.weight_decay}, nesterov={hp.nesterov}')
  if hp.steps % eval_every:
    raise ValueError(f'eval_every={eval_every} must divide the horizon steps={hp.steps}')
  c = (n - hp.batch_size) / (n - 1) if n > 1 else 0.0
  lrs = sgd.learning_rates(hp).reshape(-1, eval_every)
  # One fused XLA loop in float64: numpy's dozen temporaries per step over N·C = 150,000
  # modes made this minutes at paper scale.
  with compat.enable_x64():
    out = _modes_scan(jnp.asarray(lam, jnp.float64), jnp.asarray(energy, jnp.float64),
                      jnp.asarray(lrs), hp.momentum, c / hp.batch_size, n, num_classes)
    out = np.asarray(out)
  return np.arange(0, hp.steps + 1, eval_every), out


@functools.partial(jax.jit, static_argnums=(5, 6))
def _modes_scan(lam, energy, lrs, m, noise_scale, n, num_classes):
  """simulate_modes' recursion: [E + 1] losses at steps 0, e, 2e, ... (lrs [E, e])."""
  h = lam / n

  def step(state, eta):
    x, v, z = state
    noise = noise_scale * lam**2 * jnp.maximum(x.sum() / num_classes - x, 0.0) / n**2
    a = 1 - eta * h
    return (a**2 * x + eta**2 * m**2 * v - 2 * eta * m * a * z + eta**2 * noise,
            m**2 * v + h**2 * x + 2 * m * h * z + noise,
            a * (m * z + h * x) - eta * m**2 * v - eta * m * h * z - eta * noise), None

  def chunk(state, etas):
    state, _ = jax.lax.scan(step, state, etas)
    return state, state[0].sum() / (2 * n)

  zeros = jnp.zeros_like(energy)
  _, losses_ = jax.lax.scan(chunk, (energy, zeros, zeros), lrs)
  return jnp.concatenate([energy.sum(keepdims=True) / (2 * n), losses_])
