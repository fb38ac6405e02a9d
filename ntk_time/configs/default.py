r"""The default experiment: Fashion-MNIST 0–4 -> 5–9, ResNet-8, an 8-point grid.

Pretrain (or reuse the checkpoint) and compare prediction with real fine-tuning:

  python -m experiments.compare --config ntk_time/configs/default.py --workdir workdirs/default

(`make demo` runs exactly this.) Override any field from the command line, e.g.
`--config.finetune.steps=800 --config.predict.num_paths=64`.
"""

import ml_collections as mlc


def get_config() -> mlc.ConfigDict:
  c = mlc.ConfigDict()
  c.seed = 0

  # Source task of the pretrained model.
  c.source = mlc.ConfigDict(dict(
      source='fashion_mnist', data_dir='', image_size=0, classes=(0, 1, 2, 3, 4),
      n_train=15000, n_test=2000, seed=0, train_split='train', test_split='test',
      normalize='dataset'))
  c.model = mlc.ConfigDict(dict(name='ResNet8', num_filters=16, small_images=True))
  c.pretrain = mlc.ConfigDict(dict(
      epochs=3, batch_size=128, lr=0.1, weight_decay=5e-4,
      # A checkpoint file to start from instead of pretraining (a user's own
      # weights of the same model); empty: pretrain into <workdir>/pretrain.
      checkpoint=''))

  # Target task: what is fine-tuned, and what is predicted.
  # N = 200 at 14×14: small enough that the real runs fit the training set well
  # inside the horizon (a cross-entropy run at N = 500, 28×28 is still falling after
  # 1,600 steps at η/(1−m) = 0.01), and a real step 2-3× cheaper, so that the
  # 8 configurations × 1,200 steps fit the 15-minute budget of `make demo`.
  c.target = mlc.ConfigDict(dict(
      source='fashion_mnist', data_dir='', image_size=14, classes=(5, 6, 7, 8, 9),
      n_train=200, n_test=200, seed=1, train_split='train', test_split='test',
      normalize='dataset'))

  c.finetune = mlc.ConfigDict(dict(
      # 1,200 steps, the whole training set evaluated every 20: measured on this
      # target, the real T_eps spreads from about 100 steps (η/(1−m) = 0.2, B = 50) to
      # 600-800 (η/(1−m) = 0.01) while η/(1−m) = 0.001 is still falling at the horizon
      # (README, "What make demo does").
      loss='cross_entropy', steps=1200, eval_every=20,
      # The grid is the product of these lists: η/(1−m) = 0.001, 0.01, 0.02, 0.2 (200×),
      # each at two batch sizes. lr = 0.02 at m = 0 and the SDE's η/(1−m) = 0.2 are above
      # the linearised bound for cross-entropy's largest curvature ½ (0.016 at
      # λ_max/N = 251); the linear models spike, then converge as the curvature falls
      # with the loss (measured), as the real runs do.
      lr=(0.001, 0.02), batch_size=(10, 50), momentum=(0.0, 0.9), weight_decay=(0.0,),
      nesterov=False, schedule='constant',
      # Minibatches: 'epoch' (reshuffled once per epoch, as real training does) or 'iid'
      # (B distinct samples drawn afresh every step: the SDE's noise model), the same
      # orders for the real runs and the replaying simulators.
      sampling='epoch',
      # Real runs per configuration (batch orders); seed s uses fold_in(key, s).
      seeds=1,
      # Steps between saved training states (a multiple of eval_every): an
      # interrupted run resumes from the last one.
      checkpoint_every=400,
      # The new head, the same for the prediction and the real runs: 'random' (Flax's
      # Dense init from the seed), 'zero', or 'linear_probe' (kernel and bias fitted
      # first on the frozen pretrained features of the training set: logistic
      # regression for cross_entropy, ridge for mse, L2 strength probe_l2 on the
      # kernel; then everything is fine-tuned, LP-FT; the probe's seconds count in the
      # cost of both sides).
      head_init='random', probe_l2=1e-2))

  c.kernel = mlc.ConfigDict(dict(
      implementation='direct',  # 'direct', 'nt_jacobian_contraction' or 'nt_ntvp'
      traced=False,             # class-traced K ⊗ I_C approximation instead of the full kernel
      block_size=100,           # samples per Jacobian block (see experiments/bench_kernel.py)
      memory_gb=8.0,            # refuse to start a kernel that needs more than this
      drift_samples=100,        # samples on which the kernel drift of each real run is measured
      # k > 0: the random-projection estimate (JΠ)(JΠ)ᵀ with a [P, k] sketch from
      # sketch_seed, never stored (ntk.sketch_fn); 0: the exact kernel. sketch_kind:
      # 'gaussian' (costs N·C·P·k) or 'sparse_sign' (a CountSketch, N·C·P).
      sketch_dim=0, sketch_seed=0, sketch_kind='gaussian'))

  c.predict = mlc.ConfigDict(dict(
      # Compared side by side; the first is the headline (its cost is the prediction's): the
      # paper's SDE, since no method beats every baseline on the accuracy study (README).
      # 'relinearised' trains real steps first, so it is never the headline.
      methods=('sde', 'replay', 'head_aware', 'head_scaled', 'catapult', 'relinearised'),
      num_paths=16, dt=1,  # SDE paths, Euler–Maruyama step in SGD steps
      eps=0.05,            # T_eps tolerance on the training loss
      eps_acc=0.01,        # and on the training accuracy
      # Horizon-free times: the first step with L <= L0/f and with training error
      # <= (1 - acc0)/f, for each f.
      levels=(2.0, 4.0, 8.0),
      # The trivial baseline "a constant fraction of the horizon".
      horizon_fraction=0.5,
      dtype='float32',
      # sde, replay and full_batch on Θ ≈ U_k Λ_k U_kᵀ (dynamics.low_rank): a step costs
      # O(N·C·k) instead of (N·C)², for kernels too large to simulate densely. rank > 0
      # fixes k; rank_tol > 0 takes the smallest k whose bound on the training-loss error
      # (dynamics.truncation_bounds, loss units like eps) is below it, since a fixed k
      # means nothing across kernels. Both 0: the dense kernel, exact, and cheap at the
      # demo's N·C = 1,000.
      rank=0, rank_tol=0.0,
      # 'head_exact' only: the feature kernel G's leading feature_rank directions, by a
      # randomised SVD from feature_seed (ntk.feature_factors), of which the fewest are kept
      # whose kernel at w0 is within feature_rank_tol of Θ(w0)'s backbone part (relative
      # Frobenius error, ntk.feature_rank_errors; 0: keep them all).
      feature_rank=1000, feature_rank_tol=0.0, feature_seed=0,
      # 'relinearised' only (not training-free, never the headline): k = round(relin_fraction
      # × T) real steps of grid configuration relin_config (its seed-0 run's first k
      # batches), the kernel retaken there, and the whole grid replayed on it from f(w0).
      # relin_config = -1 takes the configuration whose η/(1−m) is the grid's lower median
      # (the first of a tie in grid order; the demo's lr 0.001, B 50, m 0.9): the kernel
      # changes with the distance trained, which grows with η/(1−m), so the middle of the
      # grid's range is the probe nearest to the most configurations; an index fixes another.
      relin_fraction=0.05, relin_config=-1,
      # 'head_scaled' only: the feature kernel grows with the simulated features,
      # K_φ(t)[i, j] = s_i^γ s_j^γ K_φ(0)[i, j], s_i = ‖φ_i(t)‖/‖φ_i(0)‖, with γ = this power
      # (dynamics.simulate_head_aware; 0 is head_aware). 1: the features grow through a
      # scale at the top (frozen BatchNorm leaves its affine free), which every Jacobian
      # below passes through, so G ∝ s²; 1 - 1/L if L layers grew alike instead.
      feature_scale_power=1.0))
  return c
