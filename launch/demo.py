r"""The built-in demo: video files -> a trained VQ tokenizer -> token shards -> Toto -> pictures.

  python -m launch.demo [--workdir runs/demo] [--videos N] [--vq_steps N] [--steps N]

1. writes synthetic sprite videos as real ``.mp4`` files with labels (train and held-out splits);
2. trains the VQ tokenizer ``configs/tokenizer.py:vq_tiny`` on their frames through the trainer;
3. tokenizes every video with ``launch.tokenize`` into token shards (+ manifest), and measures the
   tokenizer on held-out frames (PSNR, codebook usage; a reconstruction grid);
4. trains ``configs/toto.py:tiny`` on the tokens and draws its next-frame predictions decoded back
   to pixels (PNG + GIF). Every stage is resumable: rerun the command to continue.
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


def _predictions(config, params, tokenizer, out_dir: str, clips: int = 3) -> float:
  """Teacher-forced argmax predictions of held-out clips, decoded to pixels next to the truth
  (a PNG strip and a GIF); returns the token accuracy on frames 2..T (frame 1 has no past)."""
  import jax
  import jax.numpy as jnp

  from tokenizers_jax import pictures
  from toto_jax import data as token_data
  from toto_jax.model import Toto

  d = config.data
  batch = token_data.build_eval_dataset(d, process_index=0, process_count=1, batch_size=clips,
                                        num_batches=1)[0]['tokens']
  logits = jax.jit(Toto(config.model).apply)({'params': params}, jnp.asarray(batch[:, :-1]))
  pred = np.asarray(jnp.argmax(logits[..., :config.model.vocab_size], -1))
  truth = token_data.tokens_to_codes(batch, d.frames, d.frame_h, d.frame_w)
  guess = token_data.tokens_to_codes(np.concatenate([batch[:, :1], pred], axis=1), d.frames,
                                     d.frame_h, d.frame_w)
  acc = float((guess[:, 1:] == truth[:, 1:]).mean())
  # A predicted id that is not a code (a marker) is shown as code 0.
  guess = np.clip(guess, 0, tokenizer.codebook_size - 1)
  rows, labels = [], []
  for c in range(clips):
    rows += [tokenizer.decode(truth[c]), tokenizer.decode(guess[c])]
    labels += [f'clip {c}: tokens', f'clip {c}: model']
  pictures.clip_strip(rows, labels, os.path.join(out_dir, 'predictions.png'),
                      title=f'Held-out clips: tokens decoded (upper), Toto\'s next-token '
                            f'predictions from the true past decoded (lower)\ntoken accuracy on '
                            f'frames 2..{d.frames}: {acc:.1%}')
  frames = np.concatenate([rows[0], rows[1]], axis=2)  # truth | model, side by side
  from tokenizers_jax import video as video_io
  video_io.write_gif(os.path.join(out_dir, 'predictions.gif'), pictures._upscale(frames), fps=2)
  return acc


def _heldout_tokenizer_report(tokenizer, val_dir: str, val_manifest: dict, out_png: str) -> dict:
  """PSNR on held-out frames (two per video; a grid PNG of the first 16) and codebook usage over
  every held-out token the tokenization job wrote."""
  from tokenizers_jax import pictures
  from tokenizers_jax import video as video_io
  from tokenizers_jax.vq import psnr
  from toto_jax import shards

  files = video_io.list_videos(val_dir)
  frames = np.concatenate([video_io.read_clip(f, frames=2, stride=16,
                                              resolution=tokenizer.resolution) for f in files])
  recon = tokenizer.decode(tokenizer.encode(frames))
  pictures.reconstruction_grid(frames[:16], recon[:16], out_png)
  counts = np.zeros(tokenizer.codebook_size, np.int64)
  folder = os.path.dirname(val_manifest['pattern'])
  for record in shards.read_records(os.path.join(folder, f) for f in val_manifest['shard_files']):
    counts += np.bincount(record['codes'].ravel(), minlength=tokenizer.codebook_size)
  p = counts[counts > 0] / counts.sum()
  return {'heldout_frames': int(frames.shape[0]),
          'heldout_psnr_db': float(psnr(frames, recon).mean()),
          'codes_used': int((counts > 0).sum()), 'codebook_size': tokenizer.codebook_size,
          'code_perplexity': float(np.exp(-np.sum(p * np.log(p))))}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='runs/demo')
  parser.add_argument('--videos', type=int, default=768, help='synthetic training videos')
  parser.add_argument('--val_videos', type=int, default=64, help='held-out videos')
  parser.add_argument('--vq_steps', type=int, default=None, help='VQ steps (default: config)')
  parser.add_argument('--steps', type=int, default=None, help='Toto steps (default: config)')
  args = parser.parse_args()

  import jax

  from configs import tokenizer as tokenizer_configs
  from configs import toto
  from launch import tokenize as tokenize_lib
  from launch import train as train_lib
  from launch.metrics import read_metrics
  from tokenizers_jax import synthetic_video

  t0 = time.time()
  work = args.workdir
  videos = os.path.join(work, 'videos')
  timings = {}

  # --- 1. videos ----------------------------------------------------------------------------------
  print(f'[demo] 1/4 writing {args.videos} + {args.val_videos} synthetic sprite videos (.mp4) '
        f'to {videos}', flush=True)
  geometry = dict(frames=32, height=48, width=64, fps=8)
  synthetic_video.write_synthetic_videos(videos, args.videos, seed=0, split_name='train',
                                         **geometry)
  synthetic_video.write_synthetic_videos(videos, args.val_videos, seed=1, split_name='val',
                                         **geometry)
  train_videos, val_videos = os.path.join(videos, 'train'), os.path.join(videos, 'val')
  timings['videos_s'] = time.time() - t0

  # --- 2. the VQ tokenizer ------------------------------------------------------------------------
  t = time.time()
  print('[demo] 2/4 training the VQ tokenizer (configs/tokenizer.py:vq_tiny)', flush=True)
  vq_config = tokenizer_configs.get_config('vq_tiny')
  vq_config.data.input, vq_config.data.eval_input = train_videos, val_videos
  if args.vq_steps:
    vq_config.train.total_steps = args.vq_steps
    vq_config.train.warmup_steps = min(vq_config.train.warmup_steps, args.vq_steps // 5)
  vq_dir = os.path.join(work, 'vq_tiny')
  train_lib.train(vq_config, vq_dir)
  timings['vq_train_s'] = time.time() - t

  # --- 3. tokenize --------------------------------------------------------------------------------
  t = time.time()
  print('[demo] 3/4 tokenizing the videos into token shards', flush=True)
  vq_config.tokenizer.weights = vq_dir
  manifests = {}
  for split, folder in (('train', train_videos), ('val', val_videos)):
    manifests[split] = tokenize_lib.tokenize(vq_config, folder, os.path.join(work, 'tokens', split))
  tokenizer = tokenize_lib.load_tokenizer(vq_config)
  recon_png = os.path.join(work, 'reconstructions.png')
  report = _heldout_tokenizer_report(tokenizer, val_videos, manifests['val'], recon_png)
  timings['tokenize_s'] = time.time() - t

  # --- 4. Toto on the tokens ----------------------------------------------------------------------
  t = time.time()
  print('[demo] 4/4 training Toto tiny on the video tokens', flush=True)
  config = toto.get_config('tiny')
  d, mt = config.data, manifests['train']
  d.frames, d.frame_h, d.frame_w = mt['frames_per_clip'], mt['frame_h'], mt['frame_w']
  d.codebook_size = mt['codebook_size']
  config.model.vocab_size = mt['codebook_size'] + 4
  config.model.max_len = d.frames * d.frame_h * d.frame_w + 1
  d.sources = {'videos': {'pattern': mt['pattern'], 'eval_pattern': manifests['val']['pattern'],
                          'weight': 1.0, 'kind': 'video'}}
  if args.steps:
    config.train.total_steps = args.steps
    config.train.warmup_steps = min(config.train.warmup_steps, args.steps // 5)
  run_dir = os.path.join(work, 'toto_tiny')
  summary = train_lib.train(config, run_dir)
  timings['toto_train_s'] = time.time() - t
  records = read_metrics(run_dir)
  loss_png = os.path.join(work, 'loss.png')
  _plot_loss(records, config.model.vocab_size, loss_png)
  accuracy = _predictions(config, jax.device_get(summary['final_params']), tokenizer, work)

  m = summary['metrics']
  train_losses = [r['train/loss'] for r in records if 'train/loss' in r]
  result = {
      'videos': {'train': args.videos, 'val': args.val_videos},
      'tokenizer': report,
      'tokens': {split: {k: mf[k] for k in ('clips', 'frames', 'tokens', 'hours', 'failed')}
                 for split, mf in manifests.items()},
      'toto': {'steps': summary['step'],
               'first_train_loss': train_losses[0] if train_losses else None,
               'final_train_loss': m.get('train/loss'), 'final_eval_loss': m.get('eval/loss'),
               'ln_vocab': math.log(config.model.vocab_size),
               'next_frame_token_accuracy': accuracy, 'tokens_per_s': m.get('perf/tokens_per_s'),
               'mfu': m.get('perf/mfu')},
      'timings_s': timings, 'wall_s': time.time() - t0,
  }
  with open(os.path.join(work, 'summary.json'), 'w') as f:
    json.dump(result, f, indent=2)
  r, tt = report, result['toto']
  print('\n[demo] synthetic sprite videos -> VQ tokenizer -> token shards -> Toto tiny')
  print(f"  tokenizer: held-out PSNR {r['heldout_psnr_db']:.2f} dB over {r['heldout_frames']} "
        f"frames; {r['codes_used']}/{r['codebook_size']} codes used (perplexity "
        f"{r['code_perplexity']:.1f})")
  print(f"  tokens:    {mt['clips']} train clips / {manifests['val']['clips']} held-out clips of "
        f"{d.frames} frames x {d.frame_h}x{d.frame_w} codes ({mt['failed']} inputs failed)")
  print(f"  Toto:      loss {tt['first_train_loss']:.3f} -> {tt['final_train_loss']:.3f} (train), "
        f"{tt['final_eval_loss']:.3f} (held-out); ln(vocab) = {tt['ln_vocab']:.3f}; next-frame "
        f"token accuracy {accuracy:.1%}")
  print(f"  time:      {result['wall_s']:.0f} s (" + ', '.join(
      f'{k[:-2]} {v:.0f} s' for k, v in timings.items()) + ')')
  print(f'  outputs:\n    videos       {os.path.abspath(videos)}\n'
        f'    tokens       {os.path.abspath(os.path.join(work, "tokens"))} (manifest.json)\n'
        f'    tokenizer    {os.path.abspath(vq_dir)}\n'
        f'    toto         {summary["checkpoints"]}, {summary["metrics_file"]}\n'
        f'    pictures     {os.path.abspath(recon_png)}, {os.path.abspath(loss_png)},\n'
        f'                 {os.path.abspath(os.path.join(work, "predictions.png"))}, '
        f'{os.path.abspath(os.path.join(work, "predictions.gif"))}\n'
        f'    summary      {os.path.abspath(os.path.join(work, "summary.json"))}')


if __name__ == '__main__':
  main()
