r"""Video generation from a trained Toto run: prompt with held-out frames, sample, decode to pixels.

  python -m launch.generate --workdir runs/demo/toto_tiny --prompt_frames 2 --frames 64 \
      --temperature 1.0 --top_p 0.95 --output runs/demo/generated.mp4

* The run (``config.json`` + newest checkpoint) is loaded with :func:`launch.checkpoint.load`.
* Prompts are the first ``--prompt_frames`` frames of ``--videos`` records of ``--prompt_shards``
  (a glob of token shards; default: the held-out ``eval_pattern`` of the run's first file source,
  else its ``pattern``), from record ``--record`` on. ``--prompt_frames 0`` generates from the
  start marker alone and needs no shards.
* ``--frames`` is the length of the output video (prompt included); beyond the model context the
  window slides (:func:`toto_jax.sampling.generate_frames`): the oldest frame is dropped and the
  cache is re-prefilled from the kept frames.
* Codes are decoded to pixels by the tokenizer that made the shards: ``--tokenizer_workdir`` (a
  VQ tokenizer's training workdir), or ``--tokenizer_kind dvae|vqgan --tokenizer_weights PATH``,
  or else the one the shards' ``manifest.json`` names (a VQ workdir of that name next to the
  token folder or above it). Several videos are written side by side; ``.mp4`` or ``.gif``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from typing import Any

import numpy as np


def default_prompt_pattern(config) -> str:
  """The held-out shards of the run's first file source (its ``eval_pattern``, else ``pattern``)."""
  from toto_jax import data as token_data
  for name, source in config.data.sources.items():
    pattern = source.get('eval_pattern') or source.get('pattern')
    if pattern and pattern != token_data.SYNTHETIC:
      return pattern
  raise ValueError('--prompt_shards: the run trained on synthetic tokens only (config.data.sources '
                   'has no file pattern); give a glob of token shards or --prompt_frames 0')


def read_prompts(pattern: str, count: int, frames: int, frame_h: int, frame_w: int,
                 first: int = 0) -> np.ndarray:
  """The first ``frames`` frames of ``count`` video records (from record ``first`` on) of the shards
  ``pattern`` matches, as codes ``[count, frames, frame_h * frame_w]``."""
  from toto_jax import shards
  files = sorted(f for f in glob.glob(pattern) if f.endswith(shards.SHARD_SUFFIX))
  if not files:
    raise FileNotFoundError(f'--prompt_shards: no {shards.SHARD_SUFFIX} file matches {pattern!r}')
  prompts, index = [], 0
  for record in shards.read_records(files):
    codes = record['codes']
    if record['kind'] != 'video' or codes.shape[0] < frames:
      continue
    if index >= first:
      if codes.shape[1:] != (frame_h, frame_w):
        raise ValueError(f'--prompt_shards: records of {pattern!r} have {codes.shape[1]}x'
                         f'{codes.shape[2]} codes per frame, the run was trained on '
                         f'{frame_h}x{frame_w} (config data.frame_h/frame_w)')
      prompts.append(codes[:frames].reshape(frames, -1).astype(np.int32))
      if len(prompts) == count:
        return np.stack(prompts)
    index += 1
  raise ValueError(f'--prompt_shards: {pattern!r} holds {index} video records of >= {frames} frames;'
                   f' {count} from record {first} on were asked for')


def _manifest_near(pattern: str) -> tuple[dict, str] | None:
  path = os.path.join(os.path.dirname(os.path.abspath(pattern)), 'manifest.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f), path


def load_tokenizer(*, pattern: str | None, workdir: str | None = None, kind: str | None = None,
                   weights: str | None = None, resolution: int | None = None) -> Any:
  """The :class:`tokenizers_jax.api.Tokenizer` to decode with: an explicit VQ workdir or
  ``kind``/``weights``, else the one named by the ``manifest.json`` next to the shards."""
  import ml_collections

  from launch import tokenize as tokenize_lib
  manifest = _manifest_near(pattern) if pattern else None
  if not workdir and not weights and manifest:
    m, path = manifest
    if m.get('tokenizer_weights'):
      kind, weights = m.get('tokenizer_kind', 'vq'), m['tokenizer_weights']
    elif str(m.get('tokenizer', '')).startswith('vq@'):
      name = m['tokenizer'][3:].rsplit(':', 1)[0]
      folder = os.path.dirname(path)
      for _ in range(4):  # the token folder's ancestors, e.g. runs/demo/{tokens/val, vq_tiny}
        folder = os.path.dirname(folder)
        candidate = os.path.join(folder, name)
        if os.path.exists(os.path.join(candidate, 'config.json')):
          workdir = candidate
          break
    if not workdir and not weights:
      raise FileNotFoundError(f'{path} names the tokenizer {m.get("tokenizer")!r} but it was not '
                              f'found; pass --tokenizer_workdir or --tokenizer_kind/--tokenizer_weights')
    resolution = resolution or m.get('resolution')
  if workdir:
    kind, weights = 'vq', workdir
  if not weights:
    raise ValueError('no tokenizer: pass --tokenizer_workdir (a VQ run) or --tokenizer_kind and '
                     '--tokenizer_weights (no manifest.json next to the prompt shards names one)')
  if kind not in ('vq', 'dvae', 'vqgan'):
    raise ValueError(f"--tokenizer_kind must be 'vq', 'dvae' or 'vqgan', got {kind!r}")
  config = ml_collections.ConfigDict({
      'tokenizer': {'kind': kind, 'weights': weights},
      'data': {'resolution': int(resolution or (256 if kind == 'vqgan' else 128))},
      'model': {'codebook_size': int(manifest[0]['codebook_size']) if manifest else 1024}})
  return tokenize_lib.load_tokenizer(config)


def generate(workdir: str, output: str, *, frames: int = 64, prompt_frames: int = 2,
             prompt_shards: str | None = None, videos: int = 1, record: int = 0,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 0.95,
             context_frames: int | None = None, seed: int = 0, fps: float = 4.0,
             use_cache: bool = True, step: int | None = None, tokenizer_workdir: str | None = None,
             tokenizer_kind: str | None = None, tokenizer_weights: str | None = None,
             progress: bool = True) -> dict:
  """Generates ``videos`` clips of ``frames`` frames and writes them side by side to ``output``;
  returns a summary (also the codes ``[videos, frames, h, w]`` under ``'codes'``)."""
  import jax

  from launch import checkpoint
  from toto_jax import data as token_data
  from toto_jax import sampling

  if os.path.splitext(output)[1].lower() not in ('.gif', '.mp4', '.m4v'):
    raise ValueError(f'--output: {output!r} must end in .gif or .mp4')
  if not 0 <= prompt_frames < frames:
    raise ValueError(f'--prompt_frames ({prompt_frames}) must be in [0, --frames ({frames}))')
  if videos < 1:
    raise ValueError(f'--videos must be >= 1, got {videos}')
  run = checkpoint.load(workdir, step=step, items=('params',))
  config = run['config']
  m, d = config.model, config.data
  h, w = int(d.frame_h), int(d.frame_w)
  pattern = prompt_shards or (default_prompt_pattern(config) if prompt_frames else None)
  if prompt_frames:
    prompts = read_prompts(pattern, videos, prompt_frames, h, w, first=record)
  else:
    prompts = np.zeros((videos, 0, h * w), np.int32)
  if pattern is None and not (tokenizer_workdir or tokenizer_weights):
    try:
      pattern = default_prompt_pattern(config)
    except ValueError:
      pass
  tokenizer = load_tokenizer(pattern=pattern, workdir=tokenizer_workdir, kind=tokenizer_kind,
                             weights=tokenizer_weights)
  if tokenizer.grid != h or tokenizer.grid != w:
    raise ValueError(f'the tokenizer {tokenizer.name} makes {tokenizer.grid}x{tokenizer.grid} codes'
                     f' per frame, the run {workdir!r} was trained on {h}x{w}')
  codebook = min(tokenizer.codebook_size, int(m.vocab_size) - token_data.NUM_RESERVED)
  t0 = time.time()
  codes = sampling.generate_frames(
      m, run['params'], prompts, frames - prompt_frames, frame_tokens=h * w,
      context_frames=context_frames, rng=jax.random.key(seed), temperature=temperature,
      top_k=top_k, top_p=top_p, use_cache=use_cache, codebook_size=codebook, progress=progress)
  seconds = time.time() - t0
  codes = codes.reshape(videos, frames, h, w)
  # Videos side by side: decode each, then concatenate along the width.
  pixels = [tokenizer.decode(c) for c in codes]
  _write_side_by_side(pixels, output, fps)
  generated = (frames - prompt_frames) * h * w * videos
  return {'output': os.path.abspath(output), 'run_step': run['step'], 'videos': videos,
          'frames': frames, 'prompt_frames': prompt_frames,
          'context_frames': context_frames or sampling.max_context_frames(m, h * w),
          'generated_tokens': generated, 'seconds': seconds,
          'tokens_per_s': generated / seconds if seconds > 0 else float('nan'),
          'tokenizer': tokenizer.name, 'prompt_shards': pattern if prompt_frames else None,
          'codes': codes}


def _write_side_by_side(pixels: list[np.ndarray], output: str, fps: float) -> None:
  """Writes uint8 clips ``[T, H, W, 3]`` next to each other (upscaled for viewing), atomically."""
  from tokenizers_jax import pictures
  from tokenizers_jax import video as video_io
  frames = pictures._upscale(np.concatenate(pixels, axis=2))  # pylint: disable=protected-access
  if output.lower().endswith('.gif'):
    video_io.write_gif(output, frames, fps)
  else:
    video_io.write_video(output, frames, fps)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='a Toto training workdir')
  parser.add_argument('--output', required=True, help='OUT.mp4 or OUT.gif')
  parser.add_argument('--frames', type=int, default=64, help='frames per video, prompt included')
  parser.add_argument('--prompt_frames', type=int, default=2, help='prompt frames per video')
  parser.add_argument('--prompt_shards', default=None, help='glob of token shards (default: the '
                      "run's held-out shards)")
  parser.add_argument('--videos', type=int, default=1, help='videos, written side by side')
  parser.add_argument('--record', type=int, default=0, help='first prompt record')
  parser.add_argument('--temperature', type=float, default=1.0, help='0 = greedy')
  parser.add_argument('--top_k', type=int, default=0, help='0 = off')
  parser.add_argument('--top_p', type=float, default=0.95, help='1 = off')
  parser.add_argument('--context_frames', type=int, default=None,
                      help='frames in the sliding window (default: what fits in model.max_len)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--fps', type=float, default=4.0)
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: newest)')
  parser.add_argument('--no_cache', action='store_true',
                      help='recompute the full context every token (slow baseline)')
  parser.add_argument('--tokenizer_workdir', default=None, help='a VQ tokenizer training workdir')
  parser.add_argument('--tokenizer_kind', default=None, choices=('vq', 'dvae', 'vqgan'))
  parser.add_argument('--tokenizer_weights', default=None, help='dVAE / VQGAN weight file(s)')
  args = parser.parse_args(argv)
  try:
    result = generate(args.workdir, args.output, frames=args.frames,
                      prompt_frames=args.prompt_frames, prompt_shards=args.prompt_shards,
                      videos=args.videos, record=args.record, temperature=args.temperature,
                      top_k=args.top_k, top_p=args.top_p, context_frames=args.context_frames,
                      seed=args.seed, fps=args.fps, use_cache=not args.no_cache, step=args.step,
                      tokenizer_workdir=args.tokenizer_workdir, tokenizer_kind=args.tokenizer_kind,
                      tokenizer_weights=args.tokenizer_weights)
  except (FileNotFoundError, ValueError) as e:
    print(f'generate: {e}', file=sys.stderr)
    sys.exit(2)
  result.pop('codes')
  print(f"[generate] {result['output']}: {result['videos']} video(s) x {result['frames']} frames "
        f"({result['prompt_frames']} prompt), {result['generated_tokens']} tokens in "
        f"{result['seconds']:.1f} s ({result['tokens_per_s']:.0f} tokens/s)")
  print(json.dumps(result))


if __name__ == '__main__':
  main()
