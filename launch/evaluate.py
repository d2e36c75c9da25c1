r"""AVA evaluation of a trained LART run: predictions over whole tracklets -> AVA CSV -> mAP.

  python -m launch.evaluate --config configs/lart.py:tiny --workdir runs/lart_tiny \
      [--config.evaluate.step=200 --config.data.eval_input=DIR ...]

Loads the run's parameters (``launch.checkpoint.load``; ``evaluate.step``, -1 = newest), runs
:func:`lart_jax.inference.predict_csv` over the evaluation tracklets of ``config.data`` and writes
``WORKDIR/{evaluate.output}`` (``detections.csv``), then prints ``lart_jax.ava.format_table`` of
``lart_jax.ava.evaluate`` and writes the result as ``WORKDIR/ava_eval.json``.

Ground truth, in order: ``evaluate.groundtruth`` (+ ``evaluate.labelmap``, ``evaluate.exclusions``);
for a folder ``data.eval_input = ROOT/SPLIT`` the files ``lart_jax.synthetic.write_dataset``
writes next to it (``ROOT/SPLIT_gt.csv``, ``ROOT/labelmap.pbtxt``,
``ROOT/SPLIT_excluded_timestamps.csv``); for synthetic data generated in memory
(``data.input = ''``) the held-out videos' keyframe labels, written to ``WORKDIR/eval_gt.csv``
with the 60-class label map first. Only the ground truth's keyframes are predicted (AVA's
evaluated timestamps).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from launch import checkpoint as ckpt_lib
from launch.sharding import ConfigError


def synthetic_groundtruth(config, directory: str) -> tuple[str, str]:
  """Writes the AVA ground truth of the in-memory held-out synthetic videos of ``config.data``
  (the same videos ``lart_jax.data.load_dataset(data, 'eval')`` holds) and the 60-class label map
  into ``directory``; returns their paths."""
  from lart_jax import ava
  from lart_jax import data as lart_data
  from lart_jax import synthetic
  d = config.data
  if lart_data.synthetic_split(d, 'eval')[0] < 1:
    raise ConfigError('data.synthetic_eval_videos is 0: there are no held-out synthetic videos '
                      'to evaluate on')
  fps = lart_data.synthetic_config(d).fps
  rows = [r for v in lart_data.synthetic_videos(d, 'eval') for r in synthetic.gt_rows(v, fps)]
  gt, labelmap = os.path.join(directory, 'eval_gt.csv'), os.path.join(directory, 'labelmap.pbtxt')
  ava.write_csv(gt, rows)
  ava.write_labelmap(labelmap)
  return gt, labelmap


def groundtruth_files(config, workdir: str) -> tuple[str, str, str | None]:
  """(ground-truth CSV, label map, exclusions CSV or None) for ``config`` (module docstring)."""
  from lart_jax import ava
  ev, d = config.evaluate, config.data
  if ev.groundtruth:
    labelmap = ev.labelmap or os.path.join(workdir, 'labelmap.pbtxt')
    if not ev.labelmap:
      ava.write_labelmap(labelmap)
    for field, path in (('evaluate.groundtruth', ev.groundtruth), ('evaluate.labelmap', labelmap),
                        ('evaluate.exclusions', ev.exclusions)):
      if path and not os.path.isfile(path):
        raise ConfigError(f'{field}: file {path!r} does not exist')
    return ev.groundtruth, labelmap, ev.exclusions or None
  folder = d.eval_input or d.input
  if folder:
    root, split = os.path.split(os.path.normpath(folder))
    gt = os.path.join(root, f'{split}_gt.csv')
    labelmap = ev.labelmap or os.path.join(root, 'labelmap.pbtxt')
    excl = ev.exclusions or os.path.join(root, f'{split}_excluded_timestamps.csv')
    if not os.path.isfile(gt) or not os.path.isfile(labelmap):
      raise ConfigError(f'evaluate.groundtruth is empty and {gt!r} / {labelmap!r} do not exist '
                        f'next to data.eval_input={folder!r}: set evaluate.groundtruth and '
                        f'evaluate.labelmap')
    return gt, labelmap, excl if os.path.isfile(excl) else None
  gt, labelmap = synthetic_groundtruth(config, workdir)
  return gt, labelmap, ev.exclusions or None


def evaluate_run(config, workdir: str, *, params: Any | None = None,
                 progress: bool = True) -> dict:
  """Predicts, writes ``WORKDIR/{evaluate.output}`` and returns ``lart_jax.ava.evaluate``'s
  result plus ``'detections_csv'``, ``'groundtruth_csv'`` and ``'step'``. ``params`` (a pytree)
  skips loading the checkpoint."""
  from lart_jax import ava
  from lart_jax import data as lart_data
  from lart_jax import inference
  from lart_jax.task import LartTask

  LartTask(config).validate()
  step = None
  if params is None:
    want = int(config.evaluate.step)
    loaded = ckpt_lib.load(workdir, None if want < 0 else want, items=('params',))
    params, step = loaded['params'], loaded['step']
  gt, labelmap, exclusions = groundtruth_files(config, workdir)
  dataset = lart_data.load_dataset(config.data, 'eval')
  if dataset is None:
    raise ConfigError('data: there is no evaluation set (data.synthetic_eval_videos = 0)')
  keyframes = set(ava.read_csv(gt)[0])
  out = os.path.join(workdir, config.evaluate.output)
  inference.predict_csv(out, dataset, params, config, keyframes=keyframes, progress=progress)
  result = ava.evaluate(gt, out, labelmap, exclusions)
  result.update(detections_csv=out, groundtruth_csv=gt, step=step)
  return result


def main(argv) -> None:
  from absl import flags
  from lart_jax import ava
  from phalp_jax.io import atomic_write
  del argv
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  try:
    result = evaluate_run(config, workdir)
  except (ConfigError, FileNotFoundError) as e:
    print(f'config error: {e}', file=sys.stderr)
    sys.exit(2)
  print(ava.format_table(result))
  print(f"[evaluate] step {result['step']}: mAP {100 * result['mAP']:.2f} "
        f"-> {result['detections_csv']}")
  text = json.dumps({**result, 'per_class': {str(k): v for k, v in result['per_class'].items()}},
                    indent=2).encode()
  atomic_write(os.path.join(workdir, 'ava_eval.json'), lambda f: f.write(text))


if __name__ == '__main__':
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'configs/lart.py:VARIANT', lock_config=True)
  flags.DEFINE_string('workdir', None, 'The training workdir (checkpoints; output goes here).')
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
