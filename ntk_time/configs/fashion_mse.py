r"""The demo target under the squared loss: where the linearisation should hold.

Part of the accuracy study (`make accuracy`); reuses the default pretrained checkpoint:
  python -m experiments.compare --config ntk_time/configs/fashion_mse.py --workdir workdirs/fashion_mse \
      --config.pretrain.checkpoint=workdirs/default/pretrain/checkpoint.msgpack

Cross-entropy keeps pushing the logits, hence the features under the head and Θ
with them, to grow; the squared loss's targets are bounded, so its kernel should
move much less (DESIGN §3.5). Same data, model and batch sizes as the demo; the
learning rates halved, since the squared loss's curvature (1) is twice
cross-entropy's largest (1/2), which keeps lr = 0.01 at m = 0 below the linearised
bound (0.022 on this kernel); ε scaled with L0 (about 0.8 here, 1.7 under
cross-entropy).
"""

from ntk_time.configs import default


def get_config():
  c = default.get_config()
  c.finetune.update(loss='mse', lr=(0.001, 0.01), seeds=3)
  c.predict.eps = 0.02
  return c
