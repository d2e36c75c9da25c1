r"""Learning-rate sweep across widths, with or without muP (seed 000, Fig. 4.11).

  python -m launch.sweep --config configs/toto.py:tiny --widths 64,128,256 \
      --lrs 2^-9,...,2^-5 --steps 100 --workdir runs/sweep [--mup --base_width 64]

Trains every (width, learning rate) pair with :func:`launch.train.train` (the width changes
``model.dim`` and ``model.mlp_dim`` in proportion, heads fixed; depth, data and batch as in the
config) and writes, in ``--workdir``:

* ``sweep.json``: per run the final train and eval loss, the training compute ``C`` in MACs
  (:func:`toto_jax.scaling.run_compute`), the parameter count and the train-loss curve against
  compute; the best learning rate per width;
* ``sweep.png``: loss against learning rate, one line per width (under muP the optimum should stay
  put as the width grows; under the standard parameterisation it drifts to smaller rates).

Each run lives in ``{sp|mup}/w{width}_lr{lr}/``; a run with a ``result.json`` is finished and
skipped, a half-finished one resumes from its checkpoint, so re-running the command after an
interruption completes the sweep. A run whose loss turns non-finite is recorded as diverged.
Other config fields can be overridden as for ``launch.train`` (``--config.train.global_batch_size=8``).
Fit and plot a power law over the result with ``python -m launch.scaling --sweep DIR``.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from typing import Any, Sequence

import numpy as np

from toto_jax import mup as mup_lib
from toto_jax import scaling
from phalp_jax import io as io_lib
from tokenizers_jax.pictures import save_figure

_POW = re.compile(r'^\s*(-?[0-9.]+)\s*\^\s*(-?[0-9.]+)\s*$')


def parse_lr(text: str) -> float:
  """``'2^-7'`` -> 0.0078125; ``'3e-4'`` -> 0.0003."""
  m = _POW.match(text)
  value = float(m.group(1)) ** float(m.group(2)) if m else float(text)
  if not value > 0:
    raise ValueError(f'--lrs: learning rates must be positive, got {text!r}')
  return value


def parse_lrs(text: str) -> list[float]:
  """Comma-separated rates; ``...`` between two powers of the same base fills in every integer
  exponent between them (``2^-9,...,2^-5`` is five rates)."""
  items = [s.strip() for s in text.split(',') if s.strip()]
  out: list[float] = []
  for i, item in enumerate(items):
    if item != '...':
      out.append(parse_lr(item))
      continue
    lo = _POW.match(items[i - 1]) if i > 0 else None
    hi = _POW.match(items[i + 1]) if i + 1 < len(items) else None
    if not (lo and hi) or float(lo.group(1)) != float(hi.group(1)):
      raise ValueError(f'--lrs: "..." must sit between two powers of one base, as in '
                       f'2^-9,...,2^-5; got {text!r}')
    base, e0, e1 = float(lo.group(1)), float(lo.group(2)), float(hi.group(2))
    step = 1.0 if e1 > e0 else -1.0
    out.extend(base ** e for e in np.arange(e0 + step, e1, step))
  return out


def parse_widths(text: str) -> list[int]:
  try:
    widths = [int(w) for w in text.split(',') if w.strip()]
  except ValueError:
    raise ValueError(f'--widths: expected comma-separated integers, got {text!r}') from None
  if not widths or min(widths) <= 0:
    raise ValueError(f'--widths: expected positive widths, got {text!r}')
  return widths


def lr_label(lr: float) -> str:
  """``2^-7`` for powers of two, ``3e-04`` otherwise (used in run names and tables)."""
  e = math.log2(lr)
  return f'2^{int(round(e))}' if abs(e - round(e)) < 1e-9 else f'{lr:.3g}'


def run_name(width: int, lr: float) -> str:
  return f"w{width}_lr{lr_label(lr).replace('^', 'p')}"


def run_config(config, width: int, lr: float, steps: int, *, use_mup: bool,
               base_width: int | None) -> Any:
  """The config of one sweep run: ``config`` at ``width`` and ``lr`` for ``steps`` steps, muP on
  or off, with evaluation and a checkpoint at the end only and no inner progress bar."""
  config = mup_lib.enable(config, base_width) if use_mup else config.copy_and_resolve_references()
  with config.unlocked():
    config.model = mup_lib.with_width(config.model, width)
    t = config.train
    t.lr = float(lr)
    t.total_steps = int(steps)
    t.warmup_steps = min(t.warmup_steps, max(1, steps // 10))
    config.checkpoint.every_steps = steps
    config.checkpoint.keep = 1
    config.log.every_steps = max(1, min(config.log.every_steps, steps // 20 or 1))
    config.log.progress_bar = False
    config.log.tensorboard = False
    config.eval.every_steps = steps
  return config


def run_one(config, workdir: str, devices: Sequence | None = None) -> dict:
  """Trains (or resumes) one run (on ``devices``, default all) and returns its record; writes
  ``result.json`` when done."""
  from launch import metrics as metrics_lib
  from launch import train as train_lib
  from toto_jax.task import param_counts

  status, error = 'done', ''
  try:
    train_lib.train(config, workdir, devices=devices)
  except train_lib.NonFiniteError as e:
    status, error = 'diverged', str(e)
  records = metrics_lib.read_metrics(workdir)
  tokens_per_step, length = scaling.run_tokens(config, 1)
  per_token = scaling.train_macs_per_token(config.model, length)
  curve = [[int(r['step']), r['step'] * tokens_per_step * per_token, float(r['train/loss'])]
           for r in records if 'train/loss' in r]
  train_loss = curve[-1][2] if curve else math.nan
  evals = [float(r['eval/loss']) for r in records if 'eval/loss' in r]
  eval_loss = evals[-1] if evals and status == 'done' else math.nan
  if status != 'done':
    train_loss = math.nan
  result = {'width': int(config.model.dim), 'lr': float(config.train.lr),
            'lr_label': lr_label(config.train.lr), 'status': status, 'error': error,
            'steps': int(config.train.total_steps), 'train_loss': train_loss,
            'eval_loss': eval_loss, 'macs': scaling.run_compute(config),
            'params': param_counts(config.model), 'curve': curve}
  io_lib.write_json(os.path.join(workdir, 'result.json'), result)
  return result


def best_per_width(runs: Sequence[dict], key: str = 'eval_loss') -> dict[int, dict]:
  """Width -> the run with the lowest finite ``key`` at that width."""
  best: dict[int, dict] = {}
  for r in runs:
    v = r.get(key, math.nan)
    if v is None or not math.isfinite(v):
      continue
    if r['width'] not in best or v < best[r['width']][key]:
      best[r['width']] = r
  return dict(sorted(best.items()))


def plot_sweep(runs: Sequence[dict], path: str, *, title: str, key: str = 'eval_loss') -> None:
  """Loss against log2(learning rate), one line per width, the best rate of each marked."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.5))
  widths = sorted({r['width'] for r in runs})
  best = best_per_width(runs, key)
  for i, w in enumerate(widths):
    rs = sorted((r for r in runs if r['width'] == w), key=lambda r: r['lr'])
    x = [math.log2(r['lr']) for r in rs]
    y = [r[key] if r[key] is not None and math.isfinite(r[key]) else np.nan for r in rs]
    ax.plot(x, y, 'o-', color=f'C{i}', label=f'width {w}')
    if w in best:
      ax.plot(math.log2(best[w]['lr']), best[w][key], '*', color=f'C{i}', ms=16, mec='k')
  ax.set_xlabel('log2(learning rate)')
  ax.set_ylabel(key.replace('_', ' ') + ' (nats / token)')
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  save_figure(fig, path, dpi=120)


def sweep(config, widths: Sequence[int], lrs: Sequence[float], steps: int, workdir: str, *,
          use_mup: bool = False, base_width: int | None = None, progress: bool = True,
          devices: Sequence | None = None) -> dict:
  """Runs (or resumes) the whole sweep; returns what ``sweep.json`` holds."""
  from tqdm import tqdm

  if mup_lib.enabled(config.model):  # --config.model.mup=true where the config declares it
    use_mup = True
    base_width = base_width or config.model.get('mup_base_width')
  if use_mup:
    base_width = int(base_width or min(widths))
  kind = 'mup' if use_mup else 'sp'
  pairs = [(w, lr) for w in widths for lr in lrs]
  runs: list[dict] = []
  out_path = os.path.join(workdir, 'sweep.json')
  summary: dict = {}

  def write() -> None:
    best = best_per_width(runs)
    summary.update({
        'parameterisation': kind, 'base_width': base_width, 'steps': int(steps),
        'variant': config.get('variant', ''), 'widths': list(widths), 'lrs': list(lrs),
        'note': 'our figures: CPU runs on the synthetic token videos of toto_jax.synthetic, '
                'not the thesis data',
        'best': {str(w): {'lr': r['lr'], 'lr_label': r['lr_label'], 'eval_loss': r['eval_loss'],
                          'train_loss': r['train_loss'], 'macs': r['macs']}
                 for w, r in best.items()},
        'runs': runs})
    io_lib.write_json(out_path, summary)

  bar = tqdm(pairs, desc=f'sweep ({kind})', unit='run', disable=not progress)
  for width, lr in bar:
    bar.set_postfix_str(f'width {width} lr {lr_label(lr)}')
    run_dir = os.path.join(workdir, kind, run_name(width, lr))
    done = os.path.join(run_dir, 'result.json')
    if os.path.exists(done):
      result = _read_json(done)
      if result['steps'] != steps:
        raise ValueError(f'{done} is a finished run of {result["steps"]} steps, not --steps '
                         f'{steps}: use another --workdir')
      runs.append(result)
    else:
      start = time.perf_counter()
      cfg = run_config(config, width, lr, steps, use_mup=use_mup, base_width=base_width)
      result = run_one(cfg, run_dir, devices)
      result['seconds'] = time.perf_counter() - start
      io_lib.write_json(done, result)
      runs.append(result)
    write()
  plot_sweep(runs, os.path.join(workdir, 'sweep.png'),
             title=f"{'muP' if use_mup else 'standard parameterisation'}: loss vs learning rate "
                   f'({steps} steps, synthetic tokens)')
  return summary


def _read_json(path: str) -> dict:
  import json
  with open(path) as f:
    return json.load(f)


def format_table(summary: dict) -> str:
  """The sweep as text: eval loss per width (rows) and learning rate (columns), best starred."""
  runs = summary['runs']
  lrs = sorted({r['lr'] for r in runs})
  widths = sorted({r['width'] for r in runs})
  best = {int(w): b['lr'] for w, b in summary['best'].items()}
  lines = ['width  ' + ''.join(f'{lr_label(lr):>10}' for lr in lrs) + '   best lr   C (MACs)']
  for w in widths:
    cells, macs = [], math.nan
    for lr in lrs:
      r = next((r for r in runs if r['width'] == w and r['lr'] == lr), None)
      if r is None:
        cells.append(f'{"":>10}')
        continue
      macs = r['macs']
      v = r['eval_loss']
      text = 'diverged' if r['status'] != 'done' else f'{v:.4f}'
      cells.append(f"{text + ('*' if best.get(w) == lr else ''):>10}")
    tail = f"{lr_label(best[w]):>9}" if w in best else f'{"-":>9}'
    lines.append(f'{w:<7}' + ''.join(cells) + f'{tail}   {macs:.3e}')
  return '\n'.join(lines)


def main(argv) -> None:
  from absl import flags
  del argv
  f = flags.FLAGS
  try:
    widths, lrs = parse_widths(f.widths), parse_lrs(f.lrs)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  if f.steps < 1:
    print(f'error: --steps must be positive, got {f.steps}', file=sys.stderr)
    sys.exit(2)
  from launch.sharding import ConfigError
  try:
    summary = sweep(f.config, widths, lrs, f.steps, f.workdir, use_mup=f.mup,
                    base_width=f.base_width or None)
  except (ConfigError, ValueError) as e:
    print(f'config error: {e}', file=sys.stderr)
    sys.exit(2)
  print(format_table(summary))
  print(f"[sweep] {summary['parameterisation']}: {os.path.join(f.workdir, 'sweep.json')}, "
        f"{os.path.join(f.workdir, 'sweep.png')}")


if __name__ == '__main__':
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'configs/FILE.py:VARIANT', lock_config=False)
  flags.DEFINE_string('workdir', None, 'Directory for the sweep (runs, sweep.json, sweep.png).')
  flags.DEFINE_string('widths', None, 'Comma-separated model widths (model.dim).')
  flags.DEFINE_string('lrs', None, 'Comma-separated peak learning rates; 2^-9,...,2^-5 works.')
  flags.DEFINE_integer('steps', 100, 'Optimizer steps per run.')
  flags.DEFINE_bool('mup', False, 'muP parameterisation (toto_jax.mup) instead of standard.')
  flags.DEFINE_integer('base_width', 0, 'muP base width (default: the smallest of --widths).')
  flags.mark_flags_as_required(['config', 'workdir', 'widths', 'lrs'])
  app.run(main)
