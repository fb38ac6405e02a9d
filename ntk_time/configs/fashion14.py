r"""Other resolution: the Fashion-MNIST 0–4 ResNet-8 fine-tuned on classes 5–9 at 14×14.

Part of the accuracy study (`make accuracy`); reuses the default pretrained checkpoint:

  python -m experiments.compare --config ntk_time/configs/fashion14.py --workdir workdirs/fashion14 \
      --config.pretrain.checkpoint=workdirs/default/pretrain/checkpoint.msgpack
"""

from ntk_time.configs import default


def get_config():
  c = default.get_config()
  c.target.image_size = 14
  c.finetune.seeds = 3
  return c
