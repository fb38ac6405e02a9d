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
  c.target = mlc.ConfigDict(dict(
      source='fashion_mnist', data_dir='', image_size=0, classes=(5, 6, 7, 8, 9),
      n_train=500, n_test=200, seed=1, train_split='train', test_split='test',
      normalize='dataset'))

  c.finetune = mlc.ConfigDict(dict(
      # 800 steps (16 epochs at B = 10, 80 at B = 50): long enough for the runs with
      # η/(1−m) >= 0.03 to flatten, so that T_eps says something there (README, "What
      # make demo does"); the whole training set evaluated every 20 steps.
      loss='cross_entropy', steps=800, eval_every=20,
      # The grid is the product of these lists: η/(1−m) = 0.003, 0.01, 0.03, 0.1, each at
      # two batch sizes; lr stays below the linearised stability bound at m = 0.
      lr=(0.003, 0.01), batch_size=(10, 50), momentum=(0.0, 0.9), weight_decay=(0.0,),
      nesterov=False, schedule='constant',
      # Minibatches: 'epoch' (reshuffled once per epoch, as real training does) or 'iid'
      # (B distinct samples drawn afresh every step: the SDE's noise model), the same
      # orders for the real runs and the replaying simulators.
      sampling='epoch',
      # Real runs per configuration (batch orders); seed s uses fold_in(key, s).
      seeds=1,
      # Steps between saved training states (a multiple of eval_every): an
      # interrupted run resumes from the last one.
      checkpoint_every=200))

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
      # Compared side by side; the first is the headline (its cost is the prediction's).
      methods=('sde', 'replay', 'head_aware'),
      num_paths=16, dt=1,  # SDE paths, Euler–Maruyama step in SGD steps
      eps=0.05,            # T_eps tolerance on the training loss
      eps_acc=0.01,        # and on the training accuracy
      # Horizon-free times: the first step with L <= L0/f and with training error
      # <= (1 - acc0)/f, for each f.
      levels=(2.0, 4.0, 8.0),
      # The trivial baseline "a constant fraction of the horizon".
      horizon_fraction=0.5,
      dtype='float32'))
  return c
