r"""Predicts every configuration of the grid, without fine-tuning: the method's own job.

  python -m experiments.predict --config ntk_time/configs/default.py --workdir workdirs/predict

Pretrains (or loads the checkpoint), computes the kernel, times a real step
per optimiser structure, predicts each configuration with each of `predict.methods`,
and writes predictions.json and ranking.json (per configuration: predicted
T_eps and other training times with their 5–95% bands, and the predicted
seconds to T_eps) to the workdir, then prints the grid ranked by predicted
seconds. `experiments.compare` is the same with the real runs beside it
(ntk_time.pipeline.ranking does the work).

On several hosts, run the same command in one process per host with
--distributed; the kernel and the simulations are split over the devices of
every process (ntk_time/devices.py), see the README for a launch. Each process
loads the data and pretrains (or loads the checkpoint) itself and all of them
use process 0's weights; process 0 writes the workdir, the others a temporary
folder that is deleted at the end. Such runs recompute the kernel and the
predictions rather than reusing the workdir's, since every process must take
part in them.
"""

import os

from absl import app
from absl import flags
from absl import logging
import jax

from ntk_time import devices
from ntk_time import pipeline
from ntk_time import predict


def print_ranking(summary: dict) -> None:
  methods = summary['methods']
  print(f"{'config':32s} " + ' '.join(f'{m + " T_eps":>18s}' for m in methods)
        + f"  {'seconds to T_eps (' + methods[0] + ')':>26s}")
  for r in summary['configs']:
    cells = []
    for m in methods:
      p = r['predicted'][m]
      if p['diverged']:
        cells.append(f"{'diverges':>18s}")
      else:
        t = p['times']['t_eps']
        band = ('' if t['q05'] is None or t['q95'] is None
                else f" [{t['q05']:.0f}, {t['q95']:.0f}]")
        cells.append(f"{t['value']:.0f}{band}".rjust(18))
    secs = r['predicted'][methods[0]]['seconds_to_t_eps']
    print(f"{r['name']:32s} " + ' '.join(cells) + f"  {'-' if secs is None else f'{secs:.1f}':>26s}")
  c = summary['costs']
  print(f"cost: kernel {c['kernel_seconds']:.1f} s, step timing {c['step_timing_seconds']:.1f} s, "
        + ', '.join(f"{m} {c[f'{m}_seconds']:.1f} s" for m in methods)
        + f"; {summary['processes']} process(es), {summary['devices']} device(s)")
  for m in methods:
    if m in predict.NOT_TRAINING_FREE:
      print(f"{m} is not training-free: it trained real steps first (probe "
            f"{c[f'{m}_probe_seconds']:.1f} s, its own kernel {c[f'{m}_kernel_seconds']:.1f} s)")


def main(_):
  logging.set_verbosity(logging.WARNING)  # JAX's backend probing is not news
  if _DISTRIBUTED.value:
    devices.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  summary = pipeline.ranking(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)
  if jax.process_index() == 0:
    print_ranking(summary)
    print('\nwrote', os.path.join(_WORKDIR.value, 'ranking.json'), 'and predictions.json')


if __name__ == '__main__':
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  _CONFIG = config_flags.DEFINE_config_file('config', 'ntk_time/configs/default.py',
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'output folder', required=True)
  _OVERWRITE = flags.DEFINE_bool('overwrite', False,
                                 'delete a workdir made with another config instead of refusing')
  _DISTRIBUTED = flags.DEFINE_bool('distributed', False,
                                   'one process of a multi-process run (jax.distributed)')
  _COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                     "with --distributed: process 0's 'host:port' (None: detect "
                                     'the cluster, e.g. SLURM)')
  _NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'with --distributed')
  _PROCESS_ID = flags.DEFINE_integer('process_id', None, 'with --distributed: 0 .. n-1')
  app.run(main)
