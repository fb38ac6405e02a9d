"""The function-space simulators against known answers."""

import jax
import numpy as np
import pytest

from ntk_time.compat import enable_x64
from ntk_time import dynamics
from ntk_time import finetune
from ntk_time import ntk
from ntk_time import sgd


@pytest.mark.parametrize('loss', ['cross_entropy', 'mse'])
@pytest.mark.parametrize('hp_kwargs', [
    dict(momentum=0.0),
    dict(momentum=0.9),
    dict(momentum=0.8, nesterov=True),
    dict(momentum=0.9, weight_decay=0.05),
    dict(momentum=0.5, nesterov=True, weight_decay=0.1, schedule='cosine'),
])
def test_exact_simulator_equals_optax_on_linear_model(linear_task, loss, hp_kwargs):
  t = linear_task
  hp = sgd.SGD(lr=0.05, batch_size=4, steps=30, **hp_kwargs)
  with enable_x64():
    order = sgd.batch_order(jax.random.key(3), len(t.x_train), hp.batch_size, hp.steps)
    real = finetune.finetune(t.apply_fn, t.w0, t, hp, order, loss=loss, eval_every=5,
                             progress=False)
    curves, f_t, _ = dynamics.simulate_sgd(
        order[None], sgd.learning_rates(hp), t.kernel(t.x_train, t.x_train),
        ntk.outputs(t.apply_fn, t.w0, t.x_train), t.y_train, loss=loss, eval_every=5,
        momentum=hp.momentum, nesterov=hp.nesterov, weight_decay=hp.weight_decay,
        jw0_train=ntk.jvp(t.apply_fn, t.w0, t.w0, t.x_train),
        k_test_train=t.kernel(t.x_test, t.x_train),
        fx_test_0=ntk.outputs(t.apply_fn, t.w0, t.x_test), y_test=t.y_test,
        jw0_test=ntk.jvp(t.apply_fn, t.w0, t.w0, t.x_test))
    f_real = np.asarray(t.apply_fn(real['params'], t.x_train))
  assert f_t.dtype == np.float64
  np.testing.assert_allclose(f_t[0], f_real, rtol=1e-10, atol=1e-12)
  for name in ('train_loss', 'test_loss', 'train_acc', 'test_acc'):
    np.testing.assert_allclose(curves[name][0], getattr(real['curves'], name), rtol=1e-10,
                               atol=1e-12, err_msg=name)
  # The run really moved: otherwise the comparison would be vacuous.
  assert np.abs(f_real - ntk.outputs(t.apply_fn, t.w0, t.x_train)).max() > 0.05


def _problem(n=10, c=3, seed=0):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(n * c, 3 * n * c)) / np.sqrt(n * c)
  k = (a @ a.T).reshape(n, c, n, c).transpose(0, 2, 1, 3)
  return k, rng.normal(size=(n, c)) * 0.5, rng.integers(0, c, n).astype(np.int32)


@pytest.mark.parametrize('discrete', [True, False])
def test_full_batch_mse_equals_closed_form(discrete):
  k, f0, y = _problem()
  with enable_x64():
    if discrete:
      lr, steps = 0.5, 200
    else:  # a small step makes the discrete map close to the ODE
      lr, steps = 0.005, 4000
    curves, _, _ = dynamics.simulate_full_batch(np.full(steps, lr), k, f0, y, loss='mse',
                                                eval_every=steps // 20)
    ts = np.arange(0, steps + 1, steps // 20)
    closed = dynamics.mse_closed_form(k, f0, y, lr, ts, discrete=discrete)
  rtol = 1e-10 if discrete else 2e-3
  np.testing.assert_allclose(curves['train_loss'][0], closed, rtol=rtol)
  assert closed[-1] < 0.5 * closed[0]


@pytest.mark.parametrize('loss', ['cross_entropy', 'mse'])
def test_sde_with_full_batch_is_the_ode(loss):
  k, f0, y = _problem()
  n = len(y)
  with enable_x64():
    lrs = np.full(60, 0.2)
    ode, f_ode, _ = dynamics.simulate_full_batch(lrs, k, f0, y, loss=loss, eval_every=10)
    sde, f_sde, _ = dynamics.simulate_sde(jax.random.split(jax.random.key(0), 3), lrs, k, f0, y,
                                          batch_size=n, loss=loss, eval_every=10)
  np.testing.assert_allclose(f_sde, np.broadcast_to(f_ode, f_sde.shape), rtol=1e-10)
  np.testing.assert_allclose(sde['train_loss'], np.broadcast_to(ode['train_loss'], (3, 7)),
                             rtol=1e-10)


def _max_eig(k):
  n, _, c, _ = k.shape
  return np.linalg.eigvalsh(k.transpose(0, 2, 1, 3).reshape(n * c, n * c))[-1]


def test_sde_weight_decay_at_full_batch_is_the_exact_simulator():
  """B = N, m = 0: one Euler–Maruyama step of the SDE is exactly one step of the exact
  simulator, weight decay λ (F - F_0 + J w0) on train and test outputs included."""
  k, f0, y = _problem()
  rng = np.random.default_rng(1)
  kt, ft0, yt = rng.normal(size=(4, 10, 3, 3)) * 0.3, rng.normal(size=(4, 3)), np.arange(4) % 3
  arrays = dict(jw0_train=rng.normal(size=f0.shape), k_test_train=kt, fx_test_0=ft0, y_test=yt,
                jw0_test=rng.normal(size=ft0.shape), weight_decay=0.05)
  lrs = np.full(60, 0.3)
  with enable_x64():
    exact, f_ex, ft_ex = dynamics.simulate_full_batch(lrs, k, f0, y, loss='cross_entropy',
                                                      eval_every=10, **arrays)
    sde, f_sde, ft_sde = dynamics.simulate_sde(jax.random.split(jax.random.key(0), 2), lrs, k,
                                               f0, y, batch_size=10, loss='cross_entropy',
                                               eval_every=10, **arrays)
    no_decay, _, _ = dynamics.simulate_full_batch(lrs, k, f0, y, loss='cross_entropy',
                                                  eval_every=10, **{**arrays, 'weight_decay': 0})
  np.testing.assert_allclose(f_sde, np.broadcast_to(f_ex, f_sde.shape), rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(ft_sde, np.broadcast_to(ft_ex, ft_sde.shape), rtol=1e-10,
                             atol=1e-12)
  for name in ('train_loss', 'test_loss'):
    np.testing.assert_allclose(sde[name], np.broadcast_to(exact[name], sde[name].shape),
                               rtol=1e-10, err_msg=name)
  # The decay matters here: without it the curves are far apart.
  assert np.abs(no_decay['train_loss'][0] / exact['train_loss'][0] - 1).max() > 0.05


@pytest.mark.parametrize('loss', ['cross_entropy', 'mse'])
def test_sde_momentum_is_heavy_ball_at_vanishing_noise(loss):
  """B = N (c = 0): the SDE at η̃ = η/(1-m), with weight decay, against exact heavy-ball
  gradient descent (m = 0.9) on the same kernel.

  They differ by the heavy ball's lag of about m/(1-m) steps behind gradient flow, a
  relative error O(η̃ λ_max / N): measured 2.6e-3 (MSE) and 1.0e-3 (cross-entropy) at
  η̃ λ_max / N = 5e-4, four times those at 2e-3 over the same time; the curves fall by
  60-90% meanwhile. With η in place of η̃ they differ by a factor 2-8.
  """
  k, f0, y = _problem()
  n, m = len(y), 0.9
  rng = np.random.default_rng(1)
  kw = dict(loss=loss, momentum=m, weight_decay=0.02, jw0_train=rng.normal(size=f0.shape))
  errors = []
  with enable_x64():
    for speed, steps in ((5e-4, 8000), (2e-3, 2000)):  # η̃ λ_max / N; the same time
      lrs = np.full(steps, speed * (1 - m) * n / _max_eig(k))
      hb, _, _ = dynamics.simulate_full_batch(lrs, k, f0, y, eval_every=steps // 10, **kw)
      sde, _, _ = dynamics.simulate_sde(jax.random.split(jax.random.key(0), 2), lrs, k, f0, y,
                                        batch_size=n, eval_every=steps // 10, **kw)
      hb, sde = hb['train_loss'][0], np.asarray(sde['train_loss'])
      np.testing.assert_allclose(sde[1], sde[0], rtol=1e-12)  # no noise at B = N
      errors.append(np.abs(sde[0] / hb - 1).max())
  assert hb[-1] < 0.6 * hb[0]
  assert errors[0] < 4e-3, errors
  assert 3.0 < errors[1] / errors[0] < 5.0, errors  # first order in η̃ λ / N


def test_sde_several_steps_per_euler_step_agree_with_one():
  """dt = 4 SGD steps per Euler–Maruyama step against dt = 1 under a cosine schedule:
  the drift over Σ η̃_k and the noise over √(Σ η̃_k²) of each window of the schedule.

  Deterministic (B = N): they differ by the O(dt η̃ λ / N) Euler error, measured 6e-4 at
  η λ_max / N = 0.01. With noise (B = 3 of N = 10), 1,000 paths: the mean curves 7e-4
  apart, the spread over paths 2-4% (the sampling error of 1,000 paths). Summing the
  window's η̃ into its squared sum instead of summing η̃² would double the spread.
  """
  k, f0, y = _problem(n=10, c=3, seed=2)
  n = len(y)
  hp = sgd.SGD(lr=0.01 * n / _max_eig(k), batch_size=3, steps=400, schedule='cosine')
  lrs = sgd.learning_rates(hp)
  keys = jax.random.split(jax.random.key(0), 1000)
  kw = dict(loss='cross_entropy', eval_every=40)
  with enable_x64():
    det = [np.asarray(dynamics.simulate_sde(keys[:1], lrs, k, f0, y, batch_size=n, dt=dt,
                                            **kw)[0]['train_loss'])[0] for dt in (1, 4)]
    noisy = [np.asarray(dynamics.simulate_sde(keys, lrs[:200], k, f0, y, batch_size=3, dt=dt,
                                              **kw)[0]['train_loss']) for dt in (1, 4)]
  assert det[0][-1] < 0.7 * det[0][0]
  np.testing.assert_allclose(det[1], det[0], rtol=2e-3)
  np.testing.assert_allclose(noisy[1].mean(0), noisy[0].mean(0), rtol=3e-3)
  spread = [x.std(0)[1:] for x in noisy]
  assert spread[0].min() > 1e-3 * noisy[0].mean()  # the noise acts
  np.testing.assert_allclose(spread[1], spread[0], rtol=0.12)


def test_sde_step_moments_match_sampled_minibatches():
  """One SDE step has the mean and covariance of the minibatch move (DESIGN §3.2)."""
  k, f0, y = _problem(n=8, c=2, seed=1)
  n, c = f0.shape
  b, lr, draws = 3, 0.3, 100_000
  rng = np.random.default_rng(0)
  with enable_x64():
    keys = jax.random.split(jax.random.key(1), draws)
    _, f_sde, _ = dynamics.simulate_sde(keys, np.array([lr]), k, f0, y, batch_size=b,
                                        loss='cross_entropy', eval_every=1)
    orders = np.stack([rng.permutation(n)[:b] for _ in range(draws)])[:, None, :]
    _, f_sgd, _ = dynamics.simulate_sgd(orders, np.array([lr]), k, f0, y, loss='cross_entropy',
                                        eval_every=1)
  d_sde = (np.asarray(f_sde) - f0).reshape(draws, -1)
  d_sgd = (np.asarray(f_sgd) - f0).reshape(draws, -1)
  # Exact first and second moments of the minibatch move, by enumeration-free algebra.
  r = np.exp(f0) / np.exp(f0).sum(1, keepdims=True) - np.eye(c)[y]
  v = -lr * np.einsum('ijcd,jd->jic', k, r).reshape(n, n * c)  # v_j = -η Θ[:, j] r_j
  mean = v.mean(0)
  cfac = (n - b) / (n - 1)
  cov = cfac / b * np.cov(v.T, bias=True)
  for d in (d_sde, d_sgd):
    se = np.sqrt(np.diag(cov) / draws)
    assert np.all(np.abs(d.mean(0) - mean) < 5 * se + 1e-12)
    np.testing.assert_allclose(np.cov(d.T, bias=True), cov, atol=0.03 * np.abs(cov).max())


def test_euler_maruyama_reproduces_linear_sde_moments():
  """The SDE on a diagonal kernel with MSE is a linear SDE with known moments.

  With Θ = θ I (N = 2, C = 1) the residuals e = F - Y follow
  de = -a e dt + s e ⊙ (P dW), a = ηθ/N, s = η θ √(c/(BN)): the Ornstein–Uhlenbeck
  drift with noise proportional to the residual. Its mean is e_0 exp(-a t); its
  second moments M = E[e eᵀ] solve dM/dt = (-2a + s² Z) ⊙ M with Z = Cov(Pξ)
  (Z_ii = 1/2, Z_12 = -1/2). Euler–Maruyama's own discrete moments are
  (1 - a)^t e_0 and M_0 ⊙ ((1 - a)² + s² Z)^t.
  """
  theta, n, lr, b = 2.0, 2, 0.05, 1
  k = np.zeros((n, n, 1, 1))
  k[0, 0] = k[1, 1] = theta
  f0 = np.array([[2.0], [0.5]])
  y = np.zeros(n, np.int32)  # MSE target: one-hot of the only class, 1.0
  steps, paths = 40, 20_000
  with enable_x64():
    keys = jax.random.split(jax.random.key(2), paths)
    _, f_t, _ = dynamics.simulate_sde(keys, np.full(steps, lr), k, f0, y, batch_size=b, loss='mse',
                                      eval_every=steps)
  e = np.asarray(f_t)[:, :, 0] - 1.0
  e0 = f0[:, 0] - 1.0
  a = lr * theta / n
  s = lr * theta * np.sqrt((n - b) / (n - 1) / (b * n))
  z = np.array([[0.5, -0.5], [-0.5, 0.5]])
  mc = 5 * e.std(0) / np.sqrt(paths)
  np.testing.assert_array_less(np.abs(e.mean(0) - (1 - a) ** steps * e0), mc)
  m_em = np.outer(e0, e0) * ((1 - a) ** 2 + s**2 * z) ** steps
  m_sde = np.outer(e0, e0) * np.exp((-2 * a + s**2 * z) * steps)
  emp = (e[:, :, None] * e[:, None, :]).mean(0)
  np.testing.assert_allclose(emp, m_em, rtol=0.05)
  np.testing.assert_allclose(emp, m_sde, rtol=0.15)  # + the O(dt) discretisation error
  np.testing.assert_allclose(e.mean(0), e0 * np.exp(-a * steps), rtol=0.1)
  assert e[:, 0].var() > 0.05 * m_em[0, 0]  # the noise really acts


def test_sde_mean_matches_exact_simulator_average():
  """For B < N the SDE band covers the average over many batch orders.

  The SDE matches the per-step mean and covariance of SGD; what it misses is of
  higher order: measured here, reshuffled minibatches end about 1% lower than
  the SDE mean (1.6-1.9 SDE standard deviations at η = 0.05, B = 5), so the
  exact average is checked against the SDE's 1-99% band.
  """
  rng = np.random.default_rng(4)
  n, c, p = 40, 3, 200
  feats = rng.normal(size=(n, c, p)) / np.sqrt(p)
  k = np.einsum('icp,jdp->ijcd', feats, feats) * 4.0
  f0 = rng.normal(size=(n, c)) * 0.3
  y = rng.integers(0, c, n).astype(np.int32)
  b, steps, lr, paths = 5, 800, 0.05, 128
  lrs = np.full(steps, lr)
  with enable_x64():
    sde, _, _ = dynamics.simulate_sde(jax.random.split(jax.random.key(5), paths), lrs, k, f0, y,
                                      batch_size=b, loss="cross_entropy", eval_every=40)
    orders = np.stack([sgd.batch_order(kk, n, b, steps)
                       for kk in jax.random.split(jax.random.key(6), paths)])
    ex, _, _ = dynamics.simulate_sgd(orders, lrs, k, f0, y, loss="cross_entropy", eval_every=40)
  m_sde, m_ex = sde['train_loss'].mean(0), ex['train_loss'].mean(0)
  assert m_ex[-1] < 0.5 * m_ex[0]
  lo, hi = np.quantile(sde['train_loss'], [0.01, 0.99], axis=0)
  assert np.all((m_ex >= lo - 1e-12) & (m_ex <= hi + 1e-12))
  np.testing.assert_allclose(m_sde, m_ex, rtol=0.02)


def test_sde_with_a_traced_kernel_equals_the_expanded_kernel():
  """K [N, N] simulated as K equals K ⊗ I_C expanded to [N, N, C, C], path by path."""
  rng = np.random.default_rng(7)
  n, nt_, c = 9, 4, 3
  x = rng.normal(size=(n + nt_, 20))
  k = x @ x[:n].T / 20
  eye = np.eye(c)
  f0, ft0 = rng.normal(size=(n, c)) * 0.3, rng.normal(size=(nt_, c)) * 0.3
  y, yt = rng.integers(0, c, n), rng.integers(0, c, nt_)
  kw = dict(batch_size=3, loss='cross_entropy', eval_every=5, momentum=0.5, weight_decay=0.1,
            jw0_train=rng.normal(size=(n, c)), fx_test_0=ft0, y_test=yt)
  keys, lrs = jax.random.split(jax.random.key(8), 4), np.full(20, 0.7)
  with enable_x64():
    traced, f_tr, ft_tr = dynamics.simulate_sde(keys, lrs, k[:n], f0, y, k_test_train=k[n:],
                                                **kw)
    full, f_full, ft_full = dynamics.simulate_sde(
        keys, lrs, k[:n, :, None, None] * eye, f0, y,
        k_test_train=k[n:, :, None, None] * eye, **kw)
  np.testing.assert_allclose(f_tr, f_full, rtol=1e-10)
  np.testing.assert_allclose(ft_tr, ft_full, rtol=1e-10)
  np.testing.assert_allclose(traced['test_loss'], full['test_loss'], rtol=1e-10)
  assert np.abs(f_tr - f0).max() > 0.1  # it moved


@pytest.mark.parametrize('hp_kwargs', [dict(), dict(momentum=0.9),
                                       dict(momentum=0.7, nesterov=True, weight_decay=0.05)])
def test_head_aware_simulator_is_exact_for_two_layer_linear_net(hp_kwargs, two_layer_linear):
  t = two_layer_linear()
  hp = sgd.SGD(lr=0.05, batch_size=3, steps=24, **hp_kwargs)
  with enable_x64():
    order = sgd.batch_order(jax.random.key(4), len(t.x_train), 3, hp.steps)
    real = finetune.finetune(t.apply_fn, t.w0, t, hp, order, loss='cross_entropy', eval_every=6,
                             progress=False)
    # K_φ estimated from the logit kernel, as for a real network.
    k_tt, k_st = ntk.empirical_ntk(t.apply_fn, t.w0, t.x_train, t.x_test)
    phi, phit = t.features(t.w0, t.x_train), t.features(t.w0, t.x_test)
    w0 = t.w0['head']['kernel']
    k_phi = ntk.feature_kernel(k_tt, phi, phi, w0)
    np.testing.assert_allclose(k_phi, t.x_train @ t.x_train.T, rtol=1e-8)
    curves, f_t, ft_t = dynamics.simulate_head_aware(
        order[None], sgd.learning_rates(hp), k_phi, phi, t.y_train, w0, t.w0['head']['bias'],
        loss='cross_entropy', eval_every=6, momentum=hp.momentum, nesterov=hp.nesterov,
        weight_decay=hp.weight_decay, jw0_features_train=phi,
        k_phi_test=ntk.feature_kernel(k_st, phit, phi, w0), features_test_0=phit,
        y_test=t.y_test, jw0_features_test=phit)
    f_real = np.asarray(t.apply_fn(real['params'], t.x_train))
    ft_real = np.asarray(t.apply_fn(real['params'], t.x_test))
  np.testing.assert_allclose(f_t[0], f_real, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(ft_t[0], ft_real, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(curves['train_loss'][0], real['curves'].train_loss, rtol=1e-10)
  # The plain linearisation is not exact here: the head and features interact.
  with enable_x64():
    k_plain, _, _ = dynamics.simulate_sgd(order[None], sgd.learning_rates(hp), k_tt,
                                          np.asarray(t.apply_fn(t.w0, t.x_train)), t.y_train,
                                          loss='cross_entropy', eval_every=6,
                                          momentum=hp.momentum, nesterov=hp.nesterov,
                                          weight_decay=hp.weight_decay,
                                          jw0_train=ntk.jvp(t.apply_fn, t.w0, t.w0, t.x_train))
  assert np.abs(k_plain['train_loss'][0] - real['curves'].train_loss).max() > 1e-4


_COMPILES = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **_: _COMPILES.append(event)
    if event == '/jax/core/compile/backend_compile_duration' else None)


@pytest.mark.parametrize('simulate', ['sgd', 'sde'])
def test_a_second_simulation_of_the_same_shapes_compiles_nothing(simulate):
  """Each configuration of a grid is a simulation of its own (`simulate_sgd`) or a group
  of them (`simulate_sde`): with the same shapes and static settings, only the first
  compiles."""
  k, f0, y = _problem()
  n = len(y)

  def run(lr, seed):
    if simulate == 'sgd':
      orders = np.stack([sgd.batch_order(jax.random.key(seed), n, 2, 20)])
      return dynamics.simulate_sgd(orders, np.full(20, lr), k, f0, y, loss='mse', eval_every=5,
                                   momentum=0.5)
    return dynamics.simulate_sde(jax.random.split(jax.random.key(seed), 3), np.full(20, lr), k,
                                 f0, y, batch_size=2, loss='mse', eval_every=5, momentum=0.5)
  first = run(0.1, 0)
  before = len(_COMPILES)
  second = run(0.2, 1)
  assert len(_COMPILES) == before
  assert not np.allclose(first[0]['train_loss'], second[0]['train_loss'])
