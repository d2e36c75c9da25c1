r"""The built-in demo: synthetic token videos -> shards -> Toto pre-training -> plots.

  python -m launch.demo [--workdir runs/demo] [--steps N]

1. writes synthetic token clips (objects moving over a textured token grid) as ArrayRecord shards;
2. trains ``configs/toto.py:tiny`` on them through the one trainer (resumable: rerun to continue);
3. plots the loss curves and the model's next-frame predictions, and prints where everything is.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np


def _plot_loss(records: list[dict], vocab: int, path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  train = [(r['step'], r['train/loss']) for r in records if 'train/loss' in r]
  evals = [(r['step'], r['eval/loss']) for r in records if 'eval/loss' in r]
  fig, ax = plt.subplots(figsize=(6, 4))
  if train:
    ax.plot(*zip(*train), label='train')
  if evals:
    ax.plot(*zip(*evals), 'o-', label='eval (held-out clips)')
  ax.axhline(math.log(vocab), color='gray', ls='--', label=f'ln(vocab) = {math.log(vocab):.2f}')
  ax.set_xlabel('step')
  ax.set_ylabel('next-token loss (nats)')
  ax.set_title('Toto tiny on synthetic token videos')
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _plot_predictions(config, params, path: str, clips: int = 3) -> float:
  """Teacher-forced argmax predictions of every frame next to the truth; returns accuracy on
  frames 2..T (the ones predictable from the past)."""
  import jax
  import jax.numpy as jnp
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  from toto_jax import data as token_data
  from toto_jax.model import Toto

  d = config.data
  batch = token_data.build_eval_dataset(d, process_index=0, process_count=1, batch_size=clips,
                                        num_batches=1)[0]['tokens']
  logits = jax.jit(Toto(config.model).apply)({'params': params}, jnp.asarray(batch[:, :-1]))
  pred = np.asarray(jnp.argmax(logits[..., :config.model.vocab_size], -1))
  truth = token_data.tokens_to_codes(batch, d.frames, d.frame_h, d.frame_w)
  guess_tokens = np.concatenate([batch[:, :1], pred], axis=1)
  guess = token_data.tokens_to_codes(guess_tokens, d.frames, d.frame_h, d.frame_w)
  acc = float((guess[:, 1:] == truth[:, 1:]).mean())

  cmap = plt.get_cmap('tab20')
  def color(codes):
    return cmap((np.where(codes < 0, 0, codes) * 7919 % 20) / 20.0)
  fig, axes = plt.subplots(2 * clips, d.frames, figsize=(1.3 * d.frames, 2.7 * clips))
  for c in range(clips):
    for t in range(d.frames):
      for row, (img, name) in enumerate(((truth, 'truth'), (guess, 'model'))):
        ax = axes[2 * c + row, t]
        ax.imshow(color(img[c, t]), interpolation='nearest')
        ax.set_xticks([])
        ax.set_yticks([])
        if t == 0:
          ax.set_ylabel(f'clip {c}\n{name}', fontsize=8)
        if c == 0 and row == 0:
          ax.set_title(f't={t}', fontsize=8)
  fig.suptitle(f'Next-token predictions, one colour per code (accuracy on frames 2..{d.frames}: '
               f'{acc:.1%}; frame 1 has no past)', fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return acc


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='runs/demo')
  parser.add_argument('--steps', type=int, default=None, help='training steps (default: config)')
  args = parser.parse_args()

  import jax

  from configs import toto
  from launch import train as train_lib
  from launch.metrics import read_metrics
  from toto_jax import synthetic

  t0 = time.time()
  config = toto.get_config('tiny')
  d = config.data
  data_dir = os.path.join(args.workdir, 'data', 'synthetic')
  run_dir = os.path.join(args.workdir, 'toto_tiny')

  done_marker = os.path.join(data_dir, 'COMPLETE')
  if not os.path.exists(done_marker):
    print(f'[demo] writing {d.synthetic_clips} synthetic token clips '
          f'({d.frames} frames of {d.frame_h}x{d.frame_w} codes) to {data_dir}', flush=True)
    synthetic.write_synthetic_shards(data_dir, num_clips=d.synthetic_clips, frames=d.frames,
                                     h=d.frame_h, w=d.frame_w, codebook_size=d.codebook_size,
                                     seed=0, records_per_shard=256)
    open(done_marker, 'w').close()
  d.sources.synthetic.pattern = os.path.join(os.path.abspath(data_dir), '*.array_record')
  if args.steps:
    config.train.total_steps = args.steps
    config.train.warmup_steps = min(config.train.warmup_steps, args.steps // 5)

  summary = train_lib.train(config, run_dir)
  records = read_metrics(run_dir)
  loss_png = os.path.join(args.workdir, 'loss.png')
  pred_png = os.path.join(args.workdir, 'predictions.png')
  _plot_loss(records, config.model.vocab_size, loss_png)
  accuracy = _plot_predictions(config, jax.device_get(summary['final_params']), pred_png)

  m = summary['metrics']
  train_losses = [r['train/loss'] for r in records if 'train/loss' in r]
  result = {
      'steps': summary['step'], 'first_train_loss': train_losses[0] if train_losses else None,
      'final_train_loss': m.get('train/loss'), 'final_eval_loss': m.get('eval/loss'),
      'ln_vocab': math.log(config.model.vocab_size),
      'next_frame_token_accuracy': accuracy, 'tokens_per_s': m.get('perf/tokens_per_s'),
      'mfu': m.get('perf/mfu'), 'wall_s': time.time() - t0,
  }
  with open(os.path.join(args.workdir, 'summary.json'), 'w') as f:
    json.dump(result, f, indent=2)
  print('\n[demo] Toto tiny on synthetic token videos')
  print(f"  loss {result['first_train_loss']:.3f} -> {result['final_train_loss']:.3f} (train), "
        f"{result['final_eval_loss']:.3f} (held-out eval); ln(vocab) = {result['ln_vocab']:.3f}")
  print(f"  next-frame token accuracy on held-out clips: {accuracy:.1%}")
  print(f"  throughput {result['tokens_per_s']:.0f} tokens/s, MFU {result['mfu']:.1%}"
        if result['tokens_per_s'] else '')
  print(f'  outputs:\n    metrics      {summary["metrics_file"]}\n'
        f'    tensorboard  {os.path.join(os.path.abspath(run_dir), "tensorboard")}\n'
        f'    checkpoints  {summary["checkpoints"]}\n    plots        {os.path.abspath(loss_png)}, '
        f'{os.path.abspath(pred_png)}\n    summary      '
        f'{os.path.abspath(os.path.join(args.workdir, "summary.json"))}')


if __name__ == '__main__':
  main()
