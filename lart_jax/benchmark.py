r"""The synthetic LART benchmark: does multi-person context help, and does appearance?

  python -m lart_jax.benchmark [--workdir runs/lart_benchmark] [--steps 1000] [--videos 384] \
      [--eval_videos 200] [--seeds 0,1,2] [--models pose_n1,pose_n5,pose_appearance_n5] \
      [--set data.context=nearest ...] [--fresh]

In the spirit of Table 3.2 and Figs. 3.5-3.6 of seed 000: three models with identical budgets
(architecture, steps, batch, data, seed) are trained by ``launch.train`` on the synthetic
tracklets of :mod:`lart_jax.synthetic` and evaluated with the AVA protocol
(``launch.evaluate.evaluate_run``) on held-out videos:

* ``pose_n1``: LART-pose with the person of interest alone (N = 1);
* ``pose_n5``: LART-pose with 4 other people as context (N = 5);
* ``pose_appearance_n5``: pose + appearance tokens, N = 5.

Each model is trained once per seed (the seed sets the initialisation, the order of the
training windows, the masking and dropout; every run trains on the same synthetic videos and is
scored on the same held-out ones). The command prints AP over all
classes with ground truth and over the generator's groups (interaction classes
:data:`lart_jax.synthetic.INTERACTION_IDS`, which only the other people decide; their solo
look-alikes; scene classes :data:`lart_jax.synthetic.SCENE_IDS`, which only appearance decides;
pose classes) as mean and spread over the seeds, then the two expected orderings with how many
seeds show them: ``pose_n5`` above ``pose_n1`` on interactions, ``pose_appearance_n5`` above
``pose_n5`` on scenes. ``WORKDIR/results.json`` (written atomically after every run) keeps each
run's figures; started again with the same settings the command skips the runs it already has and
continues a run stopped part-way (SIGTERM) from its checkpoint (``--fresh`` starts over). ``WORKDIR/benchmark.png`` draws the table.

Why these sizes: AP on a class needs tens of positives. 24 held-out videos gave 3-20 ground-truth
boxes per class and moved a group's AP by up to 50 points between runs; 200 give 30-300.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from configs import common

MODELS = {  # name -> configs/lart.py argument
    'pose_n1': 'tiny,n1',
    'pose_n5': 'tiny,n5',
    'pose_appearance_n5': 'tiny,appearance,n5',
}
GROUPS = ('all', 'interaction', 'lookalike', 'scene', 'pose')
# (what is expected, better model, worse model, group)
ORDERINGS = (('context helps interactions', 'pose_n5', 'pose_n1', 'interaction'),
             ('appearance helps scenes', 'pose_appearance_n5', 'pose_n5', 'scene'))


def benchmark_config(arg: str, *, steps: int, videos: int, eval_videos: int, seed: int = 0,
                     overrides: Mapping[str, Any] | None = None):
  """``configs/lart.py:arg`` at the benchmark's budget: width 64, 3 layers, 32-frame windows,
  batch 32, ``steps`` steps on ``videos`` synthetic training videos; then ``overrides``
  (dotted config paths, e.g. ``{'data.context': 'nearest'}``)."""
  from configs import lart as lart_config
  c = lart_config.get_config(arg)
  m, d, t = c.model, c.data, c.train
  m.dim, m.num_heads, m.num_layers, m.mlp_dim, m.embed_hidden = 64, 4, 3, 128, 64
  d.max_frames = 32
  d.synthetic_videos, d.synthetic_eval_videos, d.synthetic_seed = videos, eval_videos, 0
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
  for path, value in (overrides or {}).items():
    common.set_field(c, path, value, source='--set')
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


class Stopped(Exception):
  """Training stopped before its last step (SIGTERM): the run is not scored or recorded."""


def run_one(workdir: str, name: str, *, steps: int, videos: int, eval_videos: int, seed: int,
            overrides: Mapping[str, Any] | None = None, resume: bool = False) -> dict[str, Any]:
  """Trains and evaluates model ``name`` with ``seed`` in ``workdir``; returns the group means
  (fractions), per-class AP, the wall time (of this call) and the last logged training loss.
  ``resume`` continues from the checkpoint a stopped call left in ``workdir`` (the trainer's
  automatic resume); otherwise ``workdir`` is emptied first."""
  import jax

  from launch import evaluate as evaluate_lib
  from launch import train as train_lib

  if name not in MODELS:
    raise ValueError(f'unknown model {name!r}; choose from {sorted(MODELS)}')
  config = benchmark_config(MODELS[name], steps=steps, videos=videos, eval_videos=eval_videos,
                            seed=seed, overrides=overrides)
  if os.path.isdir(workdir) and not resume:
    shutil.rmtree(workdir)
  start = time.perf_counter()
  summary = train_lib.train(config, workdir)
  if summary.get('preempted'):
    raise Stopped(f'{name} (seed {seed}) stopped at step {summary["step"]} of {steps}; its '
                  f'checkpoint is in {workdir}')
  params = jax.device_get(summary['final_params'])
  ava_result = evaluate_lib.evaluate_run(config, workdir, params=params, progress=False)
  return {**group_means(ava_result['per_class']), 'seconds': time.perf_counter() - start,
          'train_loss': summary['metrics'].get('train/loss'), 'config': MODELS[name],
          'per_class': {str(k): v for k, v in ava_result['per_class'].items()}}


def run(workdir: str, models: Sequence[str], *, steps: int, videos: int, eval_videos: int,
        seeds: Sequence[int] = (0,), overrides: Mapping[str, Any] | None = None,
        fresh: bool = False) -> dict[str, dict[int, dict]]:
  """Every model x seed in ``workdir/NAME/seedS``; returns ``{model: {seed: run_one(...)}}``.
  Runs already in ``workdir/results.json`` with the same settings are kept, and a run that was
  stopped part-way continues from its checkpoint (unless ``fresh``: everything starts over)."""
  import json

  from phalp_jax.io import write_json

  unknown = [m for m in models if m not in MODELS]
  if unknown:
    raise ValueError(f'unknown model {unknown[0]!r}; choose from {sorted(MODELS)}')
  settings = {'steps': steps, 'videos': videos, 'eval_videos': eval_videos,
              'overrides': {k: str(v) for k, v in sorted((overrides or {}).items())}}
  path = os.path.join(workdir, 'results.json')
  runs: dict[str, dict] = {}
  resume = False  # the run folders were made with these settings
  if not fresh and os.path.isfile(path):
    with open(path) as f:
      saved = json.load(f)
    if saved.get('settings') == settings:
      runs, resume = saved.get('runs', {}), True
    else:
      print(f'[benchmark] {path} holds other settings; starting over', flush=True)
  write_json(path, {'settings': settings, 'runs': runs})  # claims the run folders
  for seed in seeds:
    for name in models:
      key = f'{name}/seed{seed}'
      if key in runs:
        print(f'[benchmark] {key}: kept from {path}', flush=True)
        continue
      runs[key] = run_one(os.path.join(workdir, name, f'seed{seed}'), name, steps=steps,
                          videos=videos, eval_videos=eval_videos, seed=seed, overrides=overrides,
                          resume=resume)
      print(f'[benchmark] {key}: ' + ', '.join(
          f'{g} {100 * runs[key][g]:.1f}' for g in GROUPS), flush=True)
      write_json(path, {'settings': settings, 'runs': runs})
  return {m: {s: runs[f'{m}/seed{s}'] for s in seeds} for m in models}


def summarize(results: Mapping[str, Mapping[int, Mapping]]) -> dict[str, dict[str, tuple]]:
  """``{model: {group: (mean, std over seeds)}}`` of the AP fractions (NaN seeds left out)."""
  out = {}
  for name, per_seed in results.items():
    out[name] = {}
    for g in GROUPS:
      vals = np.array([r[g] for r in per_seed.values() if not math.isnan(r[g])], np.float64)
      out[name][g] = ((float(vals.mean()), float(vals.std())) if len(vals)
                      else (float('nan'), float('nan')))
  return out


def orderings(results: Mapping[str, Mapping[int, Mapping]]) -> list[dict[str, Any]]:
  """The expected orderings that the results can check: per ordering the seeds that show it,
  the seeds compared and the mean gap (AP fraction)."""
  out = []
  for what, better, worse, group in ORDERINGS:
    if better not in results or worse not in results:
      continue
    seeds = sorted(set(results[better]) & set(results[worse]))
    gaps = [results[better][s][group] - results[worse][s][group] for s in seeds]
    out.append({'what': what, 'better': better, 'worse': worse, 'group': group,
                'seeds': len(seeds), 'holds': int(sum(g > 0 for g in gaps)),
                'mean_gap': float(np.mean(gaps)) if gaps else float('nan')})
  return out


def format_results(results: Mapping[str, Mapping[int, Mapping]]) -> str:
  """The benchmark table (AP % by group, mean +- std over seeds) and the ordering checks."""
  stats = summarize(results)
  lines = [f'{"model":20}' + ''.join(f'{g:>14}' for g in GROUPS) + f'{"seeds":>7}']
  for name, row in stats.items():
    cells = ''.join('             -' if math.isnan(m) else f'{100 * m:8.1f} ±{100 * s:4.1f}'
                    for m, s in (row[g] for g in GROUPS))
    lines.append(f'{name:20}{cells}{len(results[name]):7d}')
  for o in orderings(results):
    lines.append(f'{o["what"]}: {o["better"]} > {o["worse"]} on {o["group"]} in '
                 f'{o["holds"]} of {o["seeds"]} seeds (mean gap {100 * o["mean_gap"]:+.1f} AP)')
  return '\n'.join(lines)


def plot(results: Mapping[str, Mapping[int, Mapping]], path: str) -> None:
  """Grouped bars: AP % per class group and model, one dot per seed."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  from tokenizers_jax.pictures import save_figure
  stats = summarize(results)
  fig, ax = plt.subplots(figsize=(8, 3.6))
  width = 0.8 / max(1, len(stats))
  for i, (name, row) in enumerate(stats.items()):
    x = np.arange(len(GROUPS)) + (i - (len(stats) - 1) / 2) * width
    ax.bar(x, [100 * row[g][0] for g in GROUPS], width, label=name, alpha=0.8)
    for j, g in enumerate(GROUPS):
      pts = [100 * r[g] for r in results[name].values() if not math.isnan(r[g])]
      ax.plot([x[j]] * len(pts), pts, 'k.', ms=3)
  ax.set_xticks(np.arange(len(GROUPS)), GROUPS)
  ax.set_ylabel('AP (%)')
  ax.set_ylim(0, 100)
  ax.set_title('synthetic LART benchmark (held-out videos; dots: seeds)')
  ax.legend(fontsize=8, loc='upper center', bbox_to_anchor=(0.5, -0.1), ncol=len(stats))
  fig.tight_layout()
  save_figure(fig, path)


def _parse_sets(items: Sequence[str]) -> dict[str, str]:
  out = {}
  for item in items:
    if '=' not in item:
      raise SystemExit(f'--set {item!r}: expected FIELD=VALUE, e.g. data.context=nearest')
    k, v = item.split('=', 1)
    out[k.strip()] = v.strip()
  return out


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='runs/lart_benchmark')
  parser.add_argument('--models', default=','.join(MODELS))
  parser.add_argument('--steps', type=int, default=1000)
  parser.add_argument('--videos', type=int, default=384, help='synthetic training videos')
  parser.add_argument('--eval_videos', type=int, default=200, help='held-out synthetic videos')
  parser.add_argument('--seeds', default='0,1,2', help='comma-separated training seeds')
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                      help='config override for every model, e.g. data.context=nearest')
  parser.add_argument('--fresh', action='store_true', help='ignore runs in results.json')
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
  overrides = _parse_sets(args.set)
  models = [m for m in args.models.split(',') if m]
  benchmark_config(MODELS.get(models[0], 'tiny'), steps=args.steps, videos=args.videos,
                   eval_videos=args.eval_videos, overrides=overrides)  # bad --set: fail now
  try:
    results = run(args.workdir, models, steps=args.steps, videos=args.videos,
                  eval_videos=args.eval_videos, seeds=seeds, overrides=overrides,
                  fresh=args.fresh)
  except Stopped as e:  # SIGTERM: exit 0 like the trainer; the same command carries on
    print(f'[benchmark] {e}; finished runs are in {os.path.join(args.workdir, "results.json")}; '
          f'rerun the same command to continue', flush=True)
    return
  plot(results, os.path.join(args.workdir, 'benchmark.png'))
  print(format_results(results))
  print(f'[benchmark] results: {os.path.join(args.workdir, "results.json")}, figure: '
        f'{os.path.join(args.workdir, "benchmark.png")}')


if __name__ == '__main__':
  main()
