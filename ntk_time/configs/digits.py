r"""Far domain: the Fashion-MNIST 0–4 ResNet-8 fine-tuned on scikit-learn digits 0–4
(8×8, upscaled to the demo's 14×14).

Part of the accuracy study (`make accuracy`); reuses the default pretrained checkpoint:

  python -m experiments.compare --config ntk_time/configs/digits.py --workdir workdirs/digits \
      --config.pretrain.checkpoint=workdirs/default/pretrain/checkpoint.msgpack
"""

from ntk_time.configs import default


def get_config():
  c = default.get_config()
  c.target.update(source='digits', image_size=14, classes=(0, 1, 2, 3, 4), n_train=200, n_test=200,
                  seed=1)
  c.finetune.seeds = 3
  return c
