"""The grid predictor, and the training-time definitions it applies path by path."""

import jax
import numpy as np
import pytest

from ntk_time import dynamics
from ntk_time import finetune
from ntk_time import ntk
from ntk_time import predict
from ntk_time import sgd
from ntk_time import times
from ntk_time.compat import enable_x64

STEPS = np.arange(0, 101, 10)


def test_t_eps_monotone():
  loss = np.exp(-STEPS / 20.0)  # L_T = e^-5 = 0.0067
  # |L_t - L_T| < 0.05 first at t = 60 (e^-3 - e^-5 = 0.043; e^-2.5 - e^-5 = 0.075).
  assert times.t_eps(STEPS, loss, 0.05) == 60
  assert times.t_eps(STEPS, loss, 10.0) == 0


def test_t_eps_noisy_curve_takes_first_entry():
  loss = np.array([1.0, 0.5, 0.2, 0.33, 0.21, 0.25, 0.24, 0.26, 0.25, 0.24, 0.25])
  assert times.t_eps(STEPS, loss, 0.05) == 20  # 0.2 is within 0.05 of 0.25, even if it leaves


def test_t_eps_never_converging():
  loss = 1.0 - STEPS / 100.0  # still falling at the horizon
  assert times.t_eps(STEPS, loss, 0.05) == 100
  assert times.t_eps(STEPS, loss, 0.15) == 90


def test_t_eps_of_a_curve_that_is_not_finite_is_none():
  """A diverging curve does not converge: no time (a miss when compared), never step 0."""
  loss = np.exp(-STEPS / 20.0)
  loss[-2:] = np.nan
  assert times.t_eps(STEPS, loss, 0.05) is None
  assert times.t_eps(STEPS, loss, 10.0) is None
  loss[-1] = np.inf
  assert times.t_eps(STEPS, loss, 0.05) is None
  loss[-2:] = [np.nan, 0.0]
  assert times.t_eps(STEPS, loss, 0.05) is None


def test_first_reaching():
  loss = np.exp(-STEPS / 20.0)
  assert times.first_reaching(STEPS, loss, 0.1) == 50
  assert times.first_reaching(STEPS, loss, 1e-9) is None


def test_targets_validate():
  with pytest.raises(ValueError, match='eps=0'):
    times.Targets(eps=0)


def _lin(n=12, c=3, nt_=5, seed=0, scale=1.0):
  rng = np.random.default_rng(seed)
  feats = rng.normal(size=(n + nt_, c, 60)) / np.sqrt(60)
  k = np.einsum('icp,jdp->ijcd', feats, feats[:n]) * scale
  f = rng.normal(size=(n + nt_, c)) * 0.1
  lin = ntk.Linearization(k[:n], k[n:], f[:n], f[n:], np.zeros((n, c)), np.zeros((nt_, c)))
  return lin, rng.integers(0, c, n), rng.integers(0, c, nt_)


def test_predict_bands_are_quantiles_over_the_paths():
  """Each configuration's mean and 5/50/95% curves, and its training times, are those of
  its own SDE paths (keys split(fold_in(key, i), num_paths)), recomputed here from
  dynamics.simulate_sde and times.t_eps / first_reaching path by path: the time of
  each path, then their mean (a path that never reaches counting at the horizon)."""
  lin, y, yt = _lin()
  configs = [sgd.SGD(lr=lr, batch_size=4, steps=40, momentum=m) for lr in (0.5, 2.0)
             for m in (0.0, 0.5)]
  targets = times.Targets(eps=0.02, levels=(2.0, 8.0))
  key = jax.random.key(0)
  out = predict.predict(lin, y, yt, configs, key=key, method='sde', loss='mse',
                        eval_every=10, targets=targets, num_paths=16, sampling='iid')
  assert len(out) == 4
  f32 = lambda a: a.astype(np.float32)
  for i, (hp, r) in enumerate(zip(configs, out)):
    assert not r.diverged
    paths, _, _ = dynamics.simulate_sde(
        jax.random.split(jax.random.fold_in(key, i), 16), sgd.learning_rates(hp),
        f32(lin.k_train_train), f32(lin.fx_train_0), y, batch_size=4, momentum=hp.momentum,
        loss='mse', eval_every=10, k_test_train=f32(lin.k_test_train),
        fx_test_0=f32(lin.fx_test_0), y_test=yt)
    for name in predict.CURVES:
      c = np.asarray(paths[name], np.float64)  # [16 paths, 5 steps]
      np.testing.assert_allclose(r.curves[name].mean, c.mean(0), rtol=1e-6, atol=1e-9)
      for q in (5, 50, 95):
        np.testing.assert_allclose(getattr(r.curves[name], f'q{q:02d}'),
                                   np.quantile(c, q / 100, 0), rtol=1e-6, atol=1e-9,
                                   err_msg=f'{i} {name} q{q}')
    loss = np.asarray(paths['train_loss'], np.float64)
    t_eps = [times.t_eps(r.steps, p, 0.02) for p in loss]
    t_hit = [times.first_reaching(r.steps, p, p[0] / 8) for p in loss]
    assert r.times['t_eps'].per_curve == t_eps
    assert r.times['t_eps'].value == pytest.approx(np.mean(t_eps))
    assert r.times['t_loss_8'].per_curve == t_hit
    hit = [40 if t is None else t for t in t_hit]
    want = np.mean(hit) if 2 * sum(t is not None for t in t_hit) >= 16 else None
    assert r.times['t_loss_8'].value == (None if want is None else pytest.approx(want)), i
    for q in (5, 95):
      fin = np.quantile(np.array(t_eps, float), q / 100, method='nearest')
      assert getattr(r.times['t_eps'], f'q{q:02d}') == fin
  # A larger effective learning rate trains faster.
  assert out[3].curves['train_loss'].mean[-1] < out[0].curves['train_loss'].mean[-1]


def test_sde_bands_are_those_of_minibatch_sgd():
  """The SDE's 5/50/95% bands against exact SGD on the linearised model with a fresh
  random batch of B = 4 of 12 at every step (the sampling the SDE models; reshuffled
  epochs are less noisy), 1,000 paths each, MSE, η λ_max / N = 0.12.

  Measured: the quantiles within 0.08 band widths of each other, the widths within 8%, and
  90-92% of the SGD paths inside the SDE's 90% band.
  """
  lin, y, yt = _lin()
  hp = sgd.SGD(lr=0.5, batch_size=4, steps=40)
  kw = dict(loss='mse', eval_every=10, targets=times.Targets(eps=0.02))
  rng = np.random.default_rng(0)
  orders = np.stack([[rng.permutation(12)[:4] for _ in range(40)] for _ in range(1000)])
  [sde] = predict.predict(lin, y, yt, [hp], key=jax.random.key(0), method='sde',
                          num_paths=1000, sampling='iid', **kw)
  [exact] = predict.predict(lin, y, yt, [hp], method='replay', orders=[orders], **kw)
  paths, _, _ = dynamics.simulate_sgd(orders, sgd.learning_rates(hp), lin.k_train_train,
                                      lin.fx_train_0, y, loss='mse', eval_every=10)
  s, e = sde.curves['train_loss'], exact.curves['train_loss']
  width = (s.q95 - s.q05)[1:]
  assert np.all(width > 0.05 * s.mean[1:])  # a real spread (11-16% of the mean)
  for q in ('q05', 'q50', 'q95'):
    assert np.all(np.abs(getattr(s, q) - getattr(e, q))[1:] < 0.2 * width), q
  np.testing.assert_allclose(width, (e.q95 - e.q05)[1:], rtol=0.15)
  inside = ((paths['train_loss'] >= s.q05) & (paths['train_loss'] <= s.q95)).mean(0)[1:]
  assert np.all((inside > 0.84) & (inside < 0.96)), inside


def test_sde_grid_in_one_simulation_equals_each_configuration_alone():
  """The grid's configurations (lr, B, momentum, weight decay, schedule and two horizons
  differing) are simulated together; each equals its own simulation with its own keys."""
  lin, y, yt = _lin()
  configs = [sgd.SGD(lr=0.5, batch_size=4, steps=40),
             sgd.SGD(lr=1.0, batch_size=6, steps=40, momentum=0.5, weight_decay=0.01),
             sgd.SGD(lr=2.0, batch_size=12, steps=20, schedule='cosine'),
             sgd.SGD(lr=0.3, batch_size=3, steps=40, momentum=0.9)]
  key = jax.random.key(3)
  together = predict.predict(lin, y, yt, configs, key=key, method='sde', loss='cross_entropy',
                             eval_every=10, targets=times.Targets(), num_paths=5,
                             sampling='iid')
  for i, (hp, r) in enumerate(zip(configs, together)):
    alone, _, _ = dynamics.simulate_sde(
        jax.random.split(jax.random.fold_in(key, i), 5), sgd.learning_rates(hp),
        lin.k_train_train.astype(np.float32), lin.fx_train_0.astype(np.float32), y,
        batch_size=hp.batch_size, momentum=hp.momentum, weight_decay=hp.weight_decay,
        jw0_train=lin.jw0_train.astype(np.float32), loss='cross_entropy', eval_every=10,
        k_test_train=lin.k_test_train.astype(np.float32), fx_test_0=lin.fx_test_0.astype(
            np.float32), y_test=yt, jw0_test=lin.jw0_test.astype(np.float32))
    for name in predict.CURVES:
      np.testing.assert_allclose(r.curves[name].mean, np.mean(alone[name], 0), rtol=1e-5,
                                 err_msg=f'{i} {name}')
    assert len(r.steps) == hp.steps // 10 + 1


def test_largest_eigenvalue_and_the_traced_kernel():
  """λ_max by Lanczos (> 1,000 rows) equals the full decomposition; a class-traced kernel
  predicts what the same kernel expanded to K ⊗ I_C predicts."""
  rng = np.random.default_rng(1)
  a = rng.normal(size=(1200, 300))
  k = (a @ a.T).reshape(400, 3, 400, 3).transpose(0, 2, 1, 3)
  assert predict.largest_eigenvalue(k) == pytest.approx(np.linalg.eigvalsh(a @ a.T)[-1],
                                                        rel=1e-9)
  lin, y, yt = _lin()
  k_tr = np.trace(lin.k_train_train, axis1=2, axis2=3) / 3
  k_st = np.trace(lin.k_test_train, axis1=2, axis2=3) / 3
  traced = ntk.Linearization(k_tr, k_st, *(lin.fx_train_0, lin.fx_test_0, lin.jw0_train,
                                           lin.jw0_test))
  expanded = ntk.Linearization(*traced.full_kernels(), lin.fx_train_0, lin.fx_test_0,
                               lin.jw0_train, lin.jw0_test)
  kw = dict(key=jax.random.key(0), method='sde', loss='cross_entropy', eval_every=10,
            targets=times.Targets(), num_paths=4)
  hp = [sgd.SGD(lr=1.0, batch_size=4, steps=30)]
  [a_], [b_] = (predict.predict(x, y, yt, hp, **kw) for x in (traced, expanded))
  assert a_.lr_limit == pytest.approx(b_.lr_limit, rel=1e-9)
  np.testing.assert_allclose(a_.curves['train_loss'].mean,
                             b_.curves['train_loss'].mean, rtol=1e-5)


def test_full_batch_method_is_the_closed_form():
  lin, y, yt = _lin()
  hp = sgd.SGD(lr=0.5, batch_size=12, steps=50)
  [r] = predict.predict(lin, y, yt, [hp], method='full_batch', loss='mse', eval_every=10,
                        targets=times.Targets(), dtype=np.float32)
  closed = dynamics.mse_closed_form(lin.k_train_train, lin.fx_train_0, y, 0.5, r.steps,
                                    discrete=True)
  np.testing.assert_allclose(r.curves['train_loss'].mean, closed, rtol=1e-4)


def test_divergence_is_reported_with_the_limit():
  lin, y, yt = _lin(scale=50.0)
  lam = np.linalg.eigvalsh(ntk.flatten(lin.k_train_train))[-1]
  limit = dynamics.lr_limit('full_batch', lam, 12, 'mse')
  hp = sgd.SGD(lr=3 * limit, batch_size=12, steps=200)
  [r] = predict.predict(lin, y, yt, [hp], method='full_batch', loss='mse', eval_every=10,
                        targets=times.Targets())
  assert r.diverged and r.curves is None and r.times is None
  assert r.lr_limit == pytest.approx(limit)
  [ok] = predict.predict(lin, y, yt, [sgd.SGD(lr=0.9 * limit, batch_size=12, steps=200)],
                         method='full_batch', loss='mse', eval_every=10, targets=times.Targets())
  assert not ok.diverged


_HEAD_AWARE_HP = sgd.SGD(lr=0.05, batch_size=3, steps=24, momentum=0.7, nesterov=True,
                         weight_decay=0.05)


def _head_aware_run(t, **linearize_kwargs):
  """Real fine-tuning of `t` (conftest.TwoLayerLinear) and predict's 'head_aware' and
  'exact' predictions on the same order from ntk.linearize(..., features_fn), float64."""
  hp = _HEAD_AWARE_HP
  kw = dict(orders=[None], loss='cross_entropy', eval_every=6, targets=times.Targets(),
            dtype=np.float64)
  with enable_x64():
    order = sgd.batch_order(jax.random.key(4), len(t.x_train), hp.batch_size, hp.steps)
    kw['orders'] = [order[None]]
    real = finetune.finetune(t.apply_fn, t.w0, t, hp, order, loss='cross_entropy',
                             eval_every=6, progress=False)
    lin = ntk.linearize(t.apply_fn, t.w0, t.x_train, t.x_test, features_fn=t.features,
                        progress=False, **linearize_kwargs)
    [head_aware] = predict.predict(lin, t.y_train, t.y_test, [hp], method='head_aware', **kw)
    [plain] = predict.predict(lin, t.y_train, t.y_test, [hp], method='replay', **kw)
  return real['curves'], head_aware.curves, plain.curves, lin


@pytest.mark.parametrize('traced', [False, True])
@pytest.mark.parametrize('scale', [1.0, 1.5])
def test_head_aware_through_predict_is_exact_for_a_two_layer_linear_net(
    two_layer_linear, traced, scale):
  """f = Wᵀ (s M x) + b with s = scale · 1 (isotropic features): the head-aware model is
  exact, so predict(method='head_aware') from the linearisation (full or class-traced
  kernel: K_φ needs only the trace) equals real SGD with Nesterov momentum, weight decay
  and a test set, where the plain linearisation is 6-9% off."""
  t = two_layer_linear(feature_scales=[scale] * 4)
  real, head_aware, plain, _ = _head_aware_run(t, traced=traced)
  for name in ('train_loss', 'test_loss', 'train_acc', 'test_acc'):
    np.testing.assert_allclose(head_aware[name].mean, getattr(real, name), rtol=1e-10,
                               atol=1e-12, err_msg=name)
  assert np.abs(plain['train_loss'].mean / real.train_loss - 1).max() > 0.03


def test_head_aware_with_a_non_isotropic_feature_kernel(two_layer_linear):
  """Features s ⊙ (M x) with s = (0.5, 1, 1.5, 2): their kernel is (x_iᵀ x_j) diag(s²),
  which K_φ ⊗ I_D cannot represent. feature_kernel's estimate is then, exactly,
  tr(Wᵀ diag(s²) W) / tr(WᵀW) · x_iᵀ x_j (right in the class-trace of the backbone kernel;
  here 1.80 x_iᵀ x_j against tr(G)/D = 1.875 x_iᵀ x_j). The head-aware prediction is no
  longer exact: measured 5.5% off on the training loss and 19% on the test loss, where
  the plain linearisation is 2.4% and 4% off."""
  t = two_layer_linear(feature_scales=[0.5, 1.0, 1.5, 2.0])
  real, head_aware, plain, lin = _head_aware_run(t)
  w = t.w0['head']['kernel']
  kappa = np.trace(w.T @ np.diag(t.scales**2) @ w) / np.sum(w**2)
  k_phi, k_phi_test = lin.feature_kernels()
  np.testing.assert_allclose(k_phi, kappa * t.x_train @ t.x_train.T, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(k_phi_test, kappa * t.x_test @ t.x_train.T, rtol=1e-10,
                             atol=1e-12)
  err = np.abs(head_aware['train_loss'].mean / real.train_loss - 1).max()
  assert 0.01 < err < 0.1, err


def test_head_aware_with_a_sketched_kernel(two_layer_linear):
  """K_φ from the sketched kernel (JΠ)(JΠ)ᵀ, k = 4096: within 4% of the exact K_φ
  (Frobenius), and predict(method='head_aware') within 0.2% / 0.6% of the real training /
  test loss (measured 0.14% / 0.55%); k = 64 is 46% off on K_φ, 2% / 16% on the curves."""
  t = two_layer_linear()
  real, head_aware, _, lin = _head_aware_run(t, sketch_dim=4096,
                                              sketch_key=jax.random.key(0))
  k_phi, _ = lin.feature_kernels()
  exact = t.x_train @ t.x_train.T
  assert np.linalg.norm(k_phi - exact) < 0.06 * np.linalg.norm(exact)
  for name, tol in (('train_loss', 0.004), ('test_loss', 0.012)):
    err = np.abs(head_aware[name].mean / getattr(real, name) - 1).max()
    assert 1e-6 < err < tol, (name, err)  # sketched: close, not exact


def test_to_seconds_and_errors():
  assert predict.to_seconds(200, 0.01) == pytest.approx(2.0)
  assert predict.to_seconds(None, 0.01) is None
  assert times.relative_error(120, 100) == pytest.approx(0.2)
  assert times.relative_error(None, 100) is None
  assert times.curve_log_error(np.array([1.0, np.e]), np.array([1.0, 1.0])) == pytest.approx(1.0)


def test_float64_dynamics_need_and_use_64_bit_jax():
  lin, y, yt = _lin()
  hp = sgd.SGD(lr=0.5, batch_size=12, steps=50)
  kwargs = dict(method='full_batch', loss='mse', eval_every=10, targets=times.Targets(),
                dtype=np.float64)
  with pytest.raises(ValueError, match='dtype=float64 needs 64-bit JAX'):
    predict.predict(lin, y, yt, [hp], **kwargs)
  with enable_x64():
    [r] = predict.predict(lin, y, yt, [hp], **kwargs)
    closed = dynamics.mse_closed_form(lin.k_train_train, lin.fx_train_0, y, 0.5, r.steps,
                                      discrete=True)
  # Agreement far beyond float32's 1e-7: the simulation really ran in double precision.
  np.testing.assert_allclose(r.curves['train_loss'].mean, closed, rtol=1e-12)
