r"""A tiny end-to-end configuration (seconds on a CPU) for tests and quick checks.

  python -m experiments.compare --config ntk_time/configs/smoke.py --workdir /tmp/smoke

Uses scikit-learn's bundled digits (8×8) for both the source and the target,
so it needs no data beyond the Python packages.
"""

from ntk_time.configs import default


def get_config():
  c = default.get_config()
  c.source.update(source='digits', classes=(0, 1, 2, 3, 4), n_train=200, n_test=50)
  c.model.update(name='ResNetTiny', num_filters=4)
  c.pretrain.update(epochs=1, batch_size=20)
  c.target.update(source='digits', classes=(5, 6, 7), n_train=24, n_test=12, image_size=0)
  c.finetune.update(steps=6, eval_every=2, lr=(0.05,), batch_size=(6, 24), momentum=(0.0, 0.9),
                    seeds=1, checkpoint_every=2)
  c.kernel.update(block_size=10, drift_samples=8)
  # The demo's methods but those that need a longer horizon (relinearised's probe of
  # 5% of T) or add nothing at this size; tests that want them name them.
  c.predict.update(num_paths=4, methods=('sde', 'replay', 'head_aware'))
  return c
