"""Divergence limits per method (issue 12 item 5), and the SDE's Nesterov (issue 13).

Each limit is tested by simulating just below it (0.97×: finite, not growing)
and just above it (1.03×: diverges), in float64, on a small kernel shaped like
an NTK (one dominant, flat top mode over a random PSD rest).
"""

import jax
import numpy as np
import pytest

from ntk_time import dynamics
from ntk_time import ntk
from ntk_time import predict
from ntk_time import sgd
from ntk_time import times
from ntk_time.compat import enable_x64

BELOW, ABOVE = 0.97, 1.03
CASES = [dict(momentum=0.0), dict(momentum=0.9), dict(momentum=0.9, nesterov=True),
         dict(momentum=0.5, weight_decay=0.3), dict(momentum=0.5, nesterov=True, weight_decay=0.3)]


def _kernel(n=10, c=3, seed=0, top=10.0):
  """[N, N, C, C]: a random PSD rest (λ ≤ 2.1) plus top·u uᵀ, u flat (λ_max ≈ 11)."""
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(n * c, 3 * n * c)) / np.sqrt(3 * n * c)
  u = np.ones(n * c) / np.sqrt(n * c)
  k = (a @ a.T + top * np.outer(u, u)).reshape(n, c, n, c).transpose(0, 2, 1, 3)
  return (k, rng.normal(size=(n, c)) * 0.5, rng.integers(0, c, n).astype(np.int32),
          rng.normal(size=(n, c)))


def _max_eig(k):
  return np.linalg.eigvalsh(dynamics._flat(k))[-1]


def _stable(loss_curves):
  """Finite, and the last half no higher than the middle (converging or flat)."""
  c = np.asarray(loss_curves)
  mid = c.shape[1] // 2
  return bool(np.all(np.isfinite(c)) and
              np.all(c[:, mid:].max(1) <= c[:, mid] * (1 + 1e-9) + 1e-12))


def _diverged(loss_curves):
  c = np.asarray(loss_curves)
  return bool(np.all(~np.isfinite(c[:, -1]) | (c[:, -1] > 1e6 * c[:, 0])))


def _simulate(method, factor, case, *, loss='mse', steps=2000, batch_size=None, sampling='iid',
              num=4):
  """full_batch or exact (orders of `sampling`) at factor × the method's limit."""
  k, f0, y, jw = _kernel()
  n = len(y)
  limit = dynamics.lr_limit(method, _max_eig(k), n, loss, **case)
  lrs = np.full(steps, factor * limit)
  kw = dict(loss=loss, eval_every=100, jw0_train=jw, weight_decay=case.get('weight_decay', 0.0),
            momentum=case['momentum'])
  with enable_x64():
    if method == 'full_batch':
      curves, _, _ = dynamics.simulate_full_batch(lrs, k, f0, y, nesterov=case.get('nesterov', False),
                                                  **kw)
    else:
      orders = np.stack([sgd.batch_order(jax.random.key(s), n, batch_size or n, steps, sampling)
                         for s in range(num)])
      curves, _, _ = dynamics.simulate_sgd(orders, lrs, k, f0, y,
                                           nesterov=case.get('nesterov', False), **kw)
  return curves['train_loss']


@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('method', ['full_batch', 'replay'])
def test_full_batch_limit_is_sharp(method, case):
  """Full batches (B = N, also through the exact simulator replaying all samples):
  finite just below the limit, diverging just above, with MSE."""
  below, above = (_simulate(method, f, case) for f in (BELOW, ABOVE))
  assert _stable(below), below
  assert _diverged(above), above


def _sde_cases(factors, cases, *, dt, batch_size, loss='mse', steps=2000):
  """One SDE simulation, a path per (factor, case) with its own hyper-parameters."""
  k, f0, y, jw = _kernel()
  n, lam = len(y), _max_eig(k)
  hps = [(f, c) for f in factors for c in cases]
  lrs = np.stack([np.full(steps, f * dynamics.lr_limit('sde', lam, n, loss, dt=dt, **c))
                  for f, c in hps])
  per = lambda name, default: np.array([c.get(name, default) for _, c in hps])
  with enable_x64():
    curves, _, _ = dynamics.simulate_sde(
        jax.random.split(jax.random.key(0), len(hps)), lrs, k, f0, y, batch_size=batch_size,
        loss=loss, eval_every=100, dt=dt, momentum=per('momentum', 0.0),
        nesterov=per('nesterov', False), weight_decay=per('weight_decay', 0.0), jw0_train=jw)
  return np.asarray(curves['train_loss']).reshape(len(factors), len(cases), -1)


@pytest.mark.parametrize('dt', [1, 2])
def test_sde_drift_limit_is_sharp(dt):
  """The SDE without noise (B = N): its Euler step dt η/(1 - m) on the drift is
  stable just below 2/a and diverges just above, heavy ball or Nesterov alike."""
  below, above = _sde_cases((BELOW, ABOVE), CASES, dt=dt, batch_size=10)
  for i, case in enumerate(CASES):
    assert _stable(below[i:i + 1]), (case, below[i])
    assert _diverged(above[i:i + 1]), (case, above[i])


@pytest.mark.parametrize('case', CASES[:3])
def test_minibatch_limit_is_the_mean_limit(case):
  """Exact simulator, B = N/2, i.i.d. batches: the mean move is the full-batch map, so
  above the limit the paths diverge. Below it, at m = 0 they stay finite on this
  NTK-like kernel; with momentum near its bound the batch noise diverges below it
  (not asserted: the limit is necessary only)."""
  above = _simulate('replay', ABOVE, case, batch_size=5, num=8)
  assert _diverged(above), above
  if case['momentum'] == 0.0:
    below = _simulate('replay', BELOW, case, batch_size=5, num=8)
    assert np.all(np.isfinite(below)) and np.all(below[:, -1] < below[:, 0])


def test_sde_noise_does_not_move_the_limit_above():
  """B < N: the Euler–Maruyama mean follows the drift, so 1.03× still diverges."""
  [above] = _sde_cases((ABOVE,), CASES[:3] * 4, dt=1, batch_size=5)
  assert _diverged(above)


def _check_cross_entropy(c, case, deterministic):
  assert np.all(np.isfinite(c)) and c.max() < 1.5 * c[0, 0], c
  if deterministic:
    assert _stable(c)
  if not case.get('weight_decay'):  # weight decay's minimum may have a higher loss than F_0
    assert np.all(c[:, -1] < 0.5 * c[:, 0])


@pytest.mark.parametrize('case', CASES[:3] + CASES[4:])
@pytest.mark.parametrize('method', ['full_batch', 'replay'])
def test_cross_entropy_below_the_limit_stays_finite(method, case):
  """For cross-entropy the limit (curvature bound h = 1/2) is sufficient only:
  below it the simulators stay finite and bounded (B = N/2 for the minibatch
  one); full batch converges."""
  c = _simulate(method, BELOW, case, loss='cross_entropy',
                batch_size=5 if method == 'replay' else None, num=4)
  _check_cross_entropy(c, case, method == 'full_batch')


def test_cross_entropy_below_the_sde_limit_stays_finite():
  cases = CASES[:3] + CASES[4:]
  for batch_size in (10, 5):
    [below] = _sde_cases((BELOW,), cases, dt=1, batch_size=batch_size, loss='cross_entropy')
    for i, case in enumerate(cases):
      _check_cross_entropy(below[i:i + 1], case, batch_size == 10)


def _head_aware(factor, case, loss='mse', feature_scale=0.0, steps=2000):
  """The head-aware model; feature_scale = 0 freezes the features (a linear probe: a quadratic)."""
  rng = np.random.default_rng(3)
  n, p, d, c = 10, 6, 4, 3
  x = rng.normal(size=(n, p))
  y = rng.integers(0, c, n).astype(np.int32)
  w0, b0 = rng.normal(size=(d, c)) * 0.5, np.zeros(c)
  phi = x @ (rng.normal(size=(d, p)) * 0.5).T
  k_phi = feature_scale * (x @ x.T)
  # The logit kernel at w0 of f = φ W + b: K_φ ⊗ WᵀW + (ΦΦᵀ + 1) ⊗ I_C.
  theta = (np.einsum('ij,cd->ijcd', k_phi, w0.T @ w0)
           + np.einsum('ij,cd->ijcd', phi @ phi.T + 1, np.eye(c)))
  limit = dynamics.lr_limit('head_aware', _max_eig(theta), n, loss, **case)
  orders = np.broadcast_to(np.arange(n, dtype=np.int32), (1, steps, n))
  with enable_x64():
    curves, _, _ = dynamics.simulate_head_aware(
        orders, np.full(steps, factor * limit), k_phi, phi, y, w0, b0, loss=loss, eval_every=100,
        momentum=case['momentum'], nesterov=case.get('nesterov', False),
        weight_decay=case.get('weight_decay', 0.0))
  return curves['train_loss']


@pytest.mark.parametrize('case', CASES)
def test_head_aware_limit_is_the_linearised_one_at_w0(case):
  """Where the head-aware model is a quadratic (features frozen: a linear probe) its
  limit at w0 is sharp."""
  assert _stable(_head_aware(BELOW, case))
  assert _diverged(_head_aware(ABOVE, case))
  c = _head_aware(BELOW, case, loss='cross_entropy')
  assert np.all(np.isfinite(c)) and c[0, -1] < c[0, 0]


def test_head_aware_limit_is_not_a_divergence_limit_once_features_move():
  """With moving features the model is not a quadratic: above its limit at w0 a run
  can still converge (the head and features rebalance, a catapult), so the limit
  says only whether the start is stable."""
  c = _head_aware(ABOVE, dict(momentum=0.0), feature_scale=1e-3)
  assert np.all(np.isfinite(c)) and c[0, -1] < 0.2 * c[0, 0]


@pytest.mark.parametrize('m', [0.0, 0.3, 0.6, 0.9, 0.99])
def test_nesterov_bound_is_where_a_root_leaves_the_unit_disc(m):
  """optax Nesterov on x with curvature a: v <- m v + a x, x <- x - η (a x + m v)."""
  def radius(eta_a):
    state = np.array([[1 - eta_a * (1 + m), -eta_a * m * m], [1.0, m]])  # a = 1
    return np.abs(np.linalg.eigvals(state)).max()
  bound = dynamics.lr_limit('full_batch', 1.0, 1, 'mse', momentum=m, nesterov=True)
  assert bound == pytest.approx(2 * (1 + m) / (1 + 2 * m))
  assert radius(0.999 * bound) < 1 < radius(1.001 * bound)


def test_limit_formulas():
  lam, n = 40.0, 20
  a = lam / n
  hb = dynamics.lr_limit('replay', lam, n, 'mse', momentum=0.9)
  assert hb == pytest.approx(2 * 1.9 / a)
  assert hb / dynamics.lr_limit('sde', lam, n, 'mse', momentum=0.9) == pytest.approx(19.0)
  assert dynamics.lr_limit('sde', lam, n, 'mse', momentum=0.9, nesterov=True, dt=4) == \
      pytest.approx(2 * 0.1 / (4 * a))
  assert dynamics.lr_limit('full_batch', lam, n, 'cross_entropy', weight_decay=0.5) == \
      pytest.approx(2 / (0.5 * a + 0.5))
  assert dynamics.lr_limit('head_aware', lam, n, 'mse') == dynamics.lr_limit('replay', lam, n, 'mse')
  assert dynamics.lr_limit('full_batch', 0.0, n, 'mse') == np.inf
  assert dynamics.lr_limit('nt_gradient_descent', lam, n, 'mse') == np.inf  # an ODE, no step
  with pytest.raises(ValueError, match="unknown method 'ode'"):
    dynamics.lr_limit('ode', lam, n, 'mse')
  with pytest.raises(ValueError, match='momentum'):
    dynamics.lr_limit('sde', lam, n, 'mse', momentum=1.0)


def test_predict_reports_each_methods_limit():
  """predict.predict's 'lr_limit' is the limit of the method it ran."""
  k, f0, y, jw = _kernel()
  lin = ntk.Linearization(k, np.zeros((0, 10, 3, 3)), f0, np.zeros((0, 3)), jw, np.zeros((0, 3)))
  hp = sgd.SGD(lr=0.01, batch_size=5, steps=20, momentum=0.9, nesterov=True, weight_decay=0.1)
  lam = _max_eig(k)
  for method, dt in (('sde', 2), ('full_batch', 1)):
    [r] = predict.predict(lin, y, np.zeros(0, np.int32), [hp], key=jax.random.key(0),
                          method=method, loss='mse', eval_every=10, dt=dt,
                          targets=times.Targets(), num_paths=2)
    assert r.lr_limit == pytest.approx(dynamics.lr_limit(
        method, lam, 10, 'mse', momentum=0.9, nesterov=True, weight_decay=0.1, dt=dt), rel=1e-6)


@pytest.mark.parametrize('loss', ['mse', 'cross_entropy'])
def test_sde_nesterov_at_vanishing_noise_is_first_order_close_to_nesterov(loss):
  """B = N: the SDE is the Euler map with η̃ = η/(1 - m). Against exact full-batch
  Nesterov its error is first order in η̃ a (halving η̃ at the same η̃ t halves it),
  and m times heavy ball's (Nesterov's lag m²/(1-m) steps against m/(1-m))."""
  k, f0, y, _ = _kernel()
  n = len(y)
  m, lam = 0.9, _max_eig(k)
  errors = {}
  for frac in (0.04, 0.02):  # η̃ λ_max / N
    steps = int(40 / frac)
    lrs = np.full(steps, frac * n / lam * (1 - m))
    kw = dict(loss=loss, eval_every=steps // 10, momentum=m)
    with enable_x64():
      sde, _, _ = dynamics.simulate_sde(jax.random.split(jax.random.key(0), 1), lrs, k, f0, y,
                                        batch_size=n, nesterov=True, **kw)
      for nesterov in (True, False):
        exact, _, _ = dynamics.simulate_full_batch(lrs, k, f0, y, nesterov=nesterov, **kw)
        l0 = exact['train_loss'][0, 0]
        errors[frac, nesterov] = np.abs(sde['train_loss'][0] - exact['train_loss'][0]).max() / l0
  assert errors[0.02, True] < 0.05
  assert 0.4 < errors[0.02, True] / errors[0.04, True] < 0.6
  assert errors[0.02, True] / errors[0.02, False] == pytest.approx(m, abs=0.05)


def test_sde_nesterov_must_be_bools():
  k, f0, y, _ = _kernel()
  with pytest.raises(ValueError, match='nesterov must be a bool'):
    dynamics.simulate_sde(jax.random.split(jax.random.key(0), 2), np.full(4, 0.1), k, f0, y,
                          batch_size=5, loss='mse', eval_every=2, momentum=0.5, nesterov=[0.5, 1])
