r"""The synthetic LART benchmark: does multi-person context help, and does appearance?

  python -m lart_jax.benchmark [--workdir runs/lart_benchmark] [--steps 400] [--videos 48] \
      [--eval_videos 24] [--models pose_n1,pose_n5,pose_appearance_n5]

In the spirit of Table 3.2 and Figs. 3.5-3.6 of seed 000: three models with identical budgets
(architecture, steps, batch, data, seed) are trained by ``launch.train`` on the synthetic
tracklets of :mod:`lart_jax.synthetic` and evaluated with the AVA protocol
(``launch.evaluate.evaluate_run``) on held-out videos:

* ``pose_n1``: LART-pose with the person of interest alone (N = 1);
* ``pose_n5``: LART-pose with 4 other people as context (N = 5);
* ``pose_appearance_n5``: pose + appearance tokens, N = 5.

It prints mAP over all classes with ground truth and over the generator's groups: interaction
classes (:data:`lart_jax.synthetic.INTERACTION_IDS`: only the other people decide them), their
solo look-alikes, scene classes (:data:`lart_jax.synthetic.SCENE_IDS`: only appearance decides
them) and pose classes. Expected ordering: ``pose_n5`` above ``pose_n1`` on interactions,
``pose_appearance_n5`` above both on scenes. Results go to ``WORKDIR/results.json`` (atomic).
A few minutes per model on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence

MODELS = {  # name -> configs/lart.py argument
    'pose_n1': 'tiny,n1',
    'pose_n5': 'tiny,n5',
    'pose_appearance_n5': 'tiny,appearance,n5',
}


def benchmark_config(arg: str, *, steps: int, videos: int, eval_videos: int, seed: int = 0):
  """``configs/lart.py:arg`` at the benchmark's budget: width 64, 3 layers, 32-frame windows,
  batch 32, ``steps`` steps on ``videos`` synthetic training videos."""
  from configs import lart as lart_config
  c = lart_config.get_config(arg)
  m, d, t = c.model, c.data, c.train
  m.dim, m.num_heads, m.num_layers, m.mlp_dim, m.embed_hidden = 64, 4, 3, 128, 64
  d.max_frames = 32
  d.synthetic_videos, d.synthetic_eval_videos, d.synthetic_seed = videos, eval_videos, seed
  t.epochs = 0
  t.global_batch_size = 32
  t.total_steps = steps
  t.warmup_steps = max(1, steps // 20)
  t.lr = 2e-3
  c.seed = seed
  c.checkpoint.every_steps = steps
  c.log.every_steps = max(1, steps // 10)
  c.eval.every_steps = 0
  c.evaluate.batch_size = 32
  c.evaluate.annotated_only = True  # the generator leaves people near the border unannotated
  return c


def group_means(per_class: Mapping[int, float]) -> dict[str, float]:
  """Mean AP (NaN classes left out) over all classes and the generator's class groups."""
  from lart_jax import synthetic

  def mean(ids):
    vals = [per_class[i] for i in ids if i in per_class and not math.isnan(per_class[i])]
    return sum(vals) / len(vals) if vals else float('nan')
  return {'all': mean(list(per_class)), 'interaction': mean(synthetic.INTERACTION_IDS),
          'lookalike': mean(synthetic.LOOKALIKE_IDS), 'scene': mean(synthetic.SCENE_IDS),
          'pose': mean(synthetic.POSE_IDS)}


def run(workdir: str, models: Sequence[str], *, steps: int, videos: int, eval_videos: int,
        seed: int = 0, fresh: bool = True) -> dict[str, dict]:
  """Trains and evaluates each model of ``models`` in ``workdir/NAME``; returns per model the
  group means (fractions), the wall time and the final training loss."""
  import jax

  from launch import evaluate as evaluate_lib
  from launch import train as train_lib
  from phalp_jax.io import atomic_write

  results = {}
  for name in models:
    if name not in MODELS:
      raise ValueError(f'unknown model {name!r}; choose from {sorted(MODELS)}')
    config = benchmark_config(MODELS[name], steps=steps, videos=videos, eval_videos=eval_videos,
                              seed=seed)
    run_dir = os.path.join(workdir, name)
    if fresh and os.path.isdir(run_dir):
      shutil.rmtree(run_dir)
    start = time.perf_counter()
    summary = train_lib.train(config, run_dir)
    params = jax.device_get(summary['final_params'])
    ava_result = evaluate_lib.evaluate_run(config, run_dir, params=params, progress=False)
    results[name] = {**group_means(ava_result['per_class']), 'seconds': time.perf_counter() - start,
                     'train_loss': summary['metrics'].get('train/loss'),
                     'config': MODELS[name],
                     'per_class': {str(k): v for k, v in ava_result['per_class'].items()}}
    print(f'[benchmark] {name}: ' + ', '.join(
        f'{k} {100 * results[name][k]:.1f}' for k in ('all', 'interaction', 'scene', 'pose')),
        flush=True)
  text = json.dumps({'steps': steps, 'videos': videos, 'eval_videos': eval_videos, 'seed': seed,
                     'results': results}, indent=2).encode()
  atomic_write(os.path.join(workdir, 'results.json'), lambda f: f.write(text))
  return results


def format_results(results: Mapping[str, Mapping]) -> str:
  """The benchmark table: AP (%) per group and model."""
  cols = ('all', 'interaction', 'lookalike', 'scene', 'pose')
  lines = [f'{"model":22}' + ''.join(f'{c:>13}' for c in cols) + f'{"minutes":>9}']
  for name, r in results.items():
    cells = ''.join('          -  ' if math.isnan(r[c]) else f'{100 * r[c]:13.1f}' for c in cols)
    lines.append(f'{name:22}{cells}{r["seconds"] / 60:9.1f}')
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='runs/lart_benchmark')
  parser.add_argument('--models', default=','.join(MODELS))
  parser.add_argument('--steps', type=int, default=400)
  parser.add_argument('--videos', type=int, default=48, help='synthetic training videos')
  parser.add_argument('--eval_videos', type=int, default=24, help='held-out synthetic videos')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  results = run(args.workdir, [m for m in args.models.split(',') if m], steps=args.steps,
                videos=args.videos, eval_videos=args.eval_videos, seed=args.seed)
  print(format_results(results))


if __name__ == '__main__':
  main()
