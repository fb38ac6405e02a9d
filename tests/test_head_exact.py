"""'head_exact': the head trained exactly, the features linearised under the whole G."""

import dataclasses
import os

import jax
from jax.flatten_util import ravel_pytree
import numpy as np
import pytest

from ntk_time import checks
from ntk_time import dynamics
from ntk_time import finetune
from ntk_time import models
from ntk_time import ntk
from ntk_time import predict
from ntk_time import sgd
from ntk_time import times
from ntk_time.compat import enable_x64
from ntk_time.configs import smoke


def _feature_kernel(features_fn, params, x1, x2):
  """G[x1, x2] [N1, D, N2, D] from explicit Jacobians (jax.jacrev), independent of ntk.py."""
  flat, unravel = ravel_pytree(params)
  j1 = jax.jacrev(lambda p: features_fn(unravel(p), x1))(flat)  # [N1, D, P]
  j2 = jax.jacrev(lambda p: features_fn(unravel(p), x2))(flat)
  return np.einsum('iap,jbp->iajb', j1, j2)


def _resnet(tiny_resnet):
  """A float64 ResNetTiny (D = 8 features) with random BatchNorm, 6 + 3 images, 3 classes."""
  model, variables = tiny_resnet(3, seed=2, num_filters=8)
  variables = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
  rng = np.random.default_rng(0)
  x, xt = rng.normal(size=(6, 8, 8, 1)), rng.normal(size=(3, 8, 8, 1))
  y, yt = np.array([0, 1, 2, 0, 1, 2], np.int32), np.array([2, 0, 1], np.int32)
  return (models.make_apply_fn(model, variables['batch_stats']),
          models.make_features_fn(model, variables['batch_stats']), variables['params'], x, xt,
          y, yt)


def test_full_rank_kernel_at_w0_is_the_ntk_and_first_step_is_replays(tiny_resnet):
  """At full rank (R = N·D) on a ResNet: (ΦΦᵀ + 1) ⊗ I + (I ⊗ Wᵀ) Z Zᵀ (I ⊗ W) equals Θ(w0)
  from ntk.empirical_ntk (train and test-train blocks) to float64 precision, where the
  isotropic model's does not; and one step of simulate_head_exact moves the outputs as
  replay's step on Θ(w0) does, plus the bilinear term η² Δφ ΔW (Δφ from an explicit G)."""
  apply_fn, features_fn, params, x, xt, y, yt = _resnet(tiny_resnet)
  n, d = len(x), 8
  with enable_x64():
    lin = ntk.linearize(apply_fn, params, x, xt, features_fn=features_fn, progress=False)
    lin = ntk.with_feature_factors(lin, features_fn, params, x, xt, rank=n * d, tol=0.0,
                                   key=jax.random.key(0), block_size=4)
    g = _feature_kernel(features_fn, params, np.concatenate([x, xt]), x)
  assert lin.feature_factors_train.shape == (n, d, n * d)
  phi, phit, w, b = lin.features_train, lin.features_test, lin.head_kernel, lin.head_bias
  z, zt = lin.feature_factors_train, lin.feature_factors_test
  eye = np.eye(3)
  theta = ((phi @ phi.T + 1)[:, :, None, None] * eye
           + np.einsum('iar,jbr,ac,bd->ijcd', z, z, w, w))
  theta_st = ((phit @ phi.T + 1)[:, :, None, None] * eye
              + np.einsum('iar,jbr,ac,bd->ijcd', zt, z, w, w))
  scale = np.abs(lin.k_train_train).max()
  np.testing.assert_allclose(theta, lin.k_train_train, rtol=0, atol=1e-12 * scale)
  np.testing.assert_allclose(theta_st, lin.k_test_train, rtol=0, atol=1e-12 * scale)
  assert lin.feature_rank_errors[-1] < 1e-7  # a difference of squares: ~sqrt(eps)
  # The isotropic model of the same network is off at w0 (beyond its class trace).
  k_phi, _ = lin.feature_kernels()
  iso = (phi @ phi.T + 1)[:, :, None, None] * eye + k_phi[:, :, None, None] * (w.T @ w)
  assert np.abs(iso - lin.k_train_train).max() > 1e-3 * scale

  lr, batch = 0.3, np.array([[[1, 4, 5]]])
  kw = dict(loss='cross_entropy', eval_every=1)
  with enable_x64():
    _, f1, ft1 = dynamics.simulate_head_exact(
        batch, [lr], z, phi, y, w, b, feature_factors_test=zt, features_test_0=phit, y_test=yt,
        **kw)
    _, f1_replay, ft1_replay = dynamics.simulate_sgd(
        batch, [lr], lin.k_train_train, lin.fx_train_0, y, k_test_train=lin.k_test_train,
        fx_test_0=lin.fx_test_0, y_test=yt, **kw)
  s = batch[0, 0]
  p = np.exp(lin.fx_train_0[s]) / np.exp(lin.fx_train_0[s]).sum(1, keepdims=True)
  r = p - eye[y[s]]  # [B, C] cross-entropy residuals
  dphi = np.einsum('iajb,jb->ia', g[:, :, s], r @ w.T) / len(s)  # [N + N_test, D]
  dw = phi[s].T @ r / len(s)
  bilinear = lr**2 * dphi @ dw
  np.testing.assert_allclose(f1 - f1_replay[0], bilinear[None, :n], rtol=1e-9, atol=1e-14)
  np.testing.assert_allclose(ft1 - ft1_replay[0], bilinear[None, n:], rtol=1e-9, atol=1e-14)
  assert np.abs(bilinear).max() > 1e-4  # the term is there to be seen


_ANISOTROPIC = [0.5, 1.0, 1.5, 2.0]  # feature scales s: G[i, j] = (x_iᵀ x_j) diag(s²)


def _two_layer_run(t, hp, ranks, methods=('head_exact',)):
  """Real optax fine-tuning of conftest.TwoLayerLinear `t` and predict's curves of each
  method, by name (head_exact: by rank, for each of `ranks`), float64, one batch order."""
  kw = dict(loss='cross_entropy', eval_every=10, targets=times.Targets(), dtype=np.float64)
  with enable_x64():
    order = sgd.batch_order(jax.random.key(4), len(t.x_train), hp.batch_size, hp.steps)
    real = finetune.finetune(t.apply_fn, t.w0, t, hp, order, loss='cross_entropy',
                             eval_every=10, progress=False)
    lin = ntk.linearize(t.apply_fn, t.w0, t.x_train, t.x_test, features_fn=t.features,
                        progress=False)
    full = ntk.with_feature_factors(lin, t.features, t.w0, t.x_train, t.x_test, rank=40,
                                    tol=0.0, key=jax.random.key(1), block_size=3)
    out = {}
    for m in methods:
      for r in (ranks if m == 'head_exact' else [m]):
        part = full if r == m else dataclasses.replace(
            full, feature_factors_train=full.feature_factors_train[..., :r],
            feature_factors_test=full.feature_factors_test[..., :r])
        [pred] = predict.predict(part, t.y_train, t.y_test, [hp], method=m,
                                 orders=[order[None]], **kw)
        out[r] = pred.curves
  return real['curves'], out, full


@pytest.mark.parametrize('hp_kwargs', [dict(momentum=0.9),
                                       dict(momentum=0.7, nesterov=True, weight_decay=0.05)])
def test_exact_for_a_two_layer_net_with_an_anisotropic_feature_kernel(two_layer_linear,
                                                                      hp_kwargs):
  """f = Wᵀ diag(s) M x + b, s = (0.5, 1, 1.5, 2): the features are linear in M, so the
  model is exact, and predict(method='head_exact') at full rank equals optax SGD over 150
  steps (heavy ball; Nesterov with weight decay) to float64 precision, on the training and
  the test set (measured 6e-15), where the isotropic head_aware is off by more than 10%
  (measured 106% / 48% on the training loss, 23% / 29% on the test loss)."""
  t = two_layer_linear(feature_scales=_ANISOTROPIC)
  hp = sgd.SGD(lr=0.05, batch_size=3, steps=150, **hp_kwargs)
  real, preds, _ = _two_layer_run(t, hp, ranks=[40], methods=('head_exact', 'head_aware'))
  exact = preds[40]
  for name in ('train_loss', 'test_loss', 'train_acc', 'test_acc'):
    np.testing.assert_allclose(exact[name].mean, getattr(real, name), rtol=1e-10, atol=1e-12,
                               err_msg=name)
  assert np.abs(preds['head_aware']['train_loss'].mean / real.train_loss - 1).max() > 0.1


def test_error_decreases_with_the_rank(two_layer_linear):
  """On the anisotropic two-layer net (rank G = 24 of N·D = 40): the kernel error at w0
  decreases with the rank to ~0 at 24, `with_feature_factors` keeps the fewest directions
  within tol, and the curve error max_t |log L̂_t / L_t| against real training falls with
  the rank (measured 4.6, 4.5, 0.094 at ranks 4, 12, 20 and 6e-15 at 24)."""
  t = two_layer_linear(feature_scales=_ANISOTROPIC)
  hp = sgd.SGD(lr=0.05, batch_size=3, steps=150, momentum=0.9)
  ranks = [4, 12, 20, 24]
  real, preds, full = _two_layer_run(t, hp, ranks=ranks)
  errors = full.feature_rank_errors
  assert np.all(np.diff(errors) <= 1e-12) and errors[0] > 0.3 and errors[23] < 1e-7
  curve = [np.abs(np.log(preds[r]['train_loss'].mean / real.train_loss)).max() for r in ranks]
  assert all(a > b for a, b in zip(curve, curve[1:])) and curve[-1] < 1e-10, curve
  with enable_x64():
    lin = ntk.linearize(t.apply_fn, t.w0, t.x_train, t.x_test, features_fn=t.features,
                        progress=False)
    kept = ntk.with_feature_factors(lin, t.features, t.w0, t.x_train, t.x_test, rank=40,
                                    tol=0.1, key=jax.random.key(1), block_size=3)
  r = kept.feature_factors_train.shape[-1]
  assert errors[r - 1] <= 0.1 < errors[r - 2]


def test_head_exact_needs_its_factors_and_checks_its_options(two_layer_linear):
  t = two_layer_linear()
  with enable_x64():
    lin = ntk.linearize(t.apply_fn, t.w0, t.x_train, t.x_test, features_fn=t.features,
                        progress=False)
  with pytest.raises(ValueError, match='with_feature_factors'):
    predict.predict(lin, t.y_train, t.y_test, [sgd.SGD(lr=0.1, batch_size=2, steps=4)],
                    method='head_exact', key=jax.random.key(0), loss='mse', eval_every=2,
                    targets=times.Targets())
  for field, value in (('feature_rank', 0), ('feature_rank_tol', 1.5), ('feature_seed', -1)):
    config = smoke.get_config()
    config.predict[field] = value
    with pytest.raises(ValueError, match=f'predict.{field}.*{value}'):
      checks.check(config)


def test_pipeline_predicts_head_exact_and_caches_the_factors(smoke_config, tmp_path,
                                                             monkeypatch):
  """pipeline.predicted with 'head_exact' on the smoke config: the factors are computed at
  the rank within tol, reported beside the kernel, written to feature_factors.npz, and
  reused by a rerun (which does not compute them again)."""
  from ntk_time import pipeline  # pylint: disable=g-import-not-at-top
  smoke_config.predict.update(methods=('head_exact', 'head_aware'), feature_rank=60,
                              feature_rank_tol=0.05)
  pr = pipeline.predicted(smoke_config, str(tmp_path), progress=False, with_baselines=False)
  rank, err = pr.kernel_report['feature_rank'], pr.kernel_report['feature_rank_error']
  assert pr.lin.feature_factors_train.shape[-1] == rank <= 60
  assert err <= 0.05 or rank == 60
  assert all(not p.diverged for p in pr.preds['head_exact'])
  assert os.path.exists(tmp_path / 'feature_factors.npz')
  monkeypatch.setattr(ntk, 'feature_factors', None)  # a rerun must not need it
  again = pipeline.predicted(smoke_config, str(tmp_path), progress=False, with_baselines=False)
  np.testing.assert_array_equal(again.lin.feature_factors_train, pr.lin.feature_factors_train)
  assert again.kernel_report == pr.kernel_report
