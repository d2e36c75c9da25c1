r"""Turns a folder of videos or images, or a TFDS split, into token shards for Toto.

  python -m launch.tokenize --config configs/tokenizer.py:VARIANT \
      --config.tokenizer.weights=(VQ WORKDIR | WEIGHTS.npz) \
      --input (DIR | tfds:NAME/SPLIT) --output DIR

* **Work split**: inputs (sorted) are grouped into shards of ``tokenize.records_per_shard`` files;
  shard ``s`` belongs to process ``s % process_count`` (``jax.process_index/count`` on a
  multi-host run, or ``--process_index/--process_count`` for independent processes).
* **Resumable and atomic**: each shard is written to a temporary name and renamed; its statistics
  (``{prefix}-{s}.stats.json``) are written after it and mark it finished, so a rerun skips
  finished shards and redoes the rest. A reader never sees a half-written shard.
* **Bad input never stops the job**: an unreadable, corrupt, truncated or empty file is recorded
  with its reason and the job goes on; ``manifest.json`` lists clips, frames, tokens, hours of
  video and every failure.
* Video: short side resized to ``data.resolution``, a square crop, every ``tokenize.stride``-th
  frame, clips of ``tokenize.frames`` frames (Toto: 128 px, stride 4, 16 frames). A ``labels.csv``
  (``file,label``) in the input folder attaches class labels to the records.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import json
import os
import sys
import time
import zlib
from typing import Any, Iterator

import numpy as np

from phalp_jax import io as io_lib

MANIFEST = 'manifest.json'


# ------------------------------------------------------------------------------------------------
# Loading a tokenizer from a config
# ------------------------------------------------------------------------------------------------

def load_tokenizer(config) -> Any:
  """The :class:`tokenizers_jax.api.Tokenizer` that ``config.tokenizer`` names."""
  from tokenizers_jax import api
  kind, weights = config.tokenizer.kind, config.tokenizer.weights
  if not weights:
    raise ValueError(f'tokenizer.weights is empty: give the {"training workdir" if kind == "vq" else "weight file"} '
                     f'of the {kind} tokenizer (--config.tokenizer.weights=PATH)')
  if not os.path.exists(weights):
    raise FileNotFoundError(f'tokenizer.weights: {weights!r} does not exist')
  if kind == 'vq':
    from launch import checkpoint
    from tokenizers_jax import vq
    run = checkpoint.load(weights)
    vq_config = vq.VQConfig.from_config(run['config'].model)
    return api.from_vq(vq_config, run['params'], run['model_state'],
                       resolution=int(run['config'].data.resolution),
                       name=f'vq@{os.path.basename(os.path.normpath(weights))}:{run["step"]}')
  if kind == 'dvae':
    return api.from_dvae(weights, resolution=int(config.data.resolution))
  if kind == 'vqgan':
    return api.from_vqgan(weights, codebook_size=int(config.model.codebook_size),
                          resolution=int(config.data.resolution))
  raise ValueError(f"tokenizer.kind must be 'vq', 'dvae' or 'vqgan', got {kind!r}")


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Item:
  """One input: a video file, an image file, or a TFDS example index."""
  key: str
  kind: str          # 'video' | 'image' | 'tfds'
  label: int = -1


def _read_labels(root: str) -> dict[str, int]:
  path = os.path.join(root, 'labels.csv')
  if not os.path.exists(path):
    return {}
  labels = {}
  with open(path, newline='') as f:
    for row in csv.DictReader(f):
      if 'file' in row and 'label' in row:
        labels[os.path.normpath(row['file'])] = int(row['label'])
  return labels


def list_items(spec: str, tfds_data_dir: str | None = None) -> tuple[list[Item], Any]:
  """Every input of ``spec`` in a fixed order, and the TFDS source when there is one."""
  from tokenizers_jax import images as image_io
  from tokenizers_jax import video as video_io
  parsed = image_io.parse_input_spec(spec)
  if parsed[0] == 'tfds':
    return [], (parsed[1], parsed[2], tfds_data_dir)
  root = parsed[1]
  if not os.path.exists(root):
    raise FileNotFoundError(f'--input: {root!r} does not exist')
  if not os.path.isdir(root):
    raise NotADirectoryError(f'--input: {root!r} is not a directory')
  labels = _read_labels(root)
  rel = lambda p: os.path.normpath(os.path.relpath(p, root))
  videos = video_io.list_videos(root)
  items = [Item(p, 'video', labels.get(rel(p), -1)) for p in videos]
  if not items:
    items = [Item(p, 'image', labels.get(rel(p), -1)) for p in image_io.list_images(root)]
  if not items:
    raise ValueError(f'--input: {root!r} holds no videos or images')
  return items, None


@dataclasses.dataclass
class Decoded:
  item: Item
  clips: list[np.ndarray]      # uint8 [T, R, R, 3] each (images: T == 1)
  seconds: float = 0.0
  error: str | None = None


def _decode(item: Item, config, tfds_source) -> Decoded:
  from tokenizers_jax import images as image_io
  from tokenizers_jax import video as video_io
  tk, d = config.tokenize, config.data
  try:
    if item.kind == 'video':
      info = video_io.probe_video(item.key, exact=False)  # header only: no second decode
      clips = list(video_io.read_clips(
          item.key, frames=tk.frames, stride=tk.stride, resolution=d.resolution, crop=tk.crop,
          rng=np.random.default_rng(zlib.crc32(item.key.encode())),
          max_clips=tk.max_clips_per_video or None, short=tk.short_videos))
      if not clips:
        raise video_io.VideoError(item.key, 'yielded no clip')
      return Decoded(item, clips, seconds=float(info.duration_s))
    if item.kind == 'image':
      image = image_io.read_image(item.key, resolution=d.resolution, crop=tk.crop)
      return Decoded(item, [image[None]])
    image, label = tfds_source[int(item.key)]
    item.label = int(label)
    return Decoded(item, [np.asarray(image)[None]])
  except Exception as e:  # noqa: BLE001 - any failure of one input is recorded, never fatal
    return Decoded(item, [], error=f'{type(e).__name__}: {e}')


# ------------------------------------------------------------------------------------------------
# Shards
# ------------------------------------------------------------------------------------------------

def _stats_path(output: str, prefix: str, index: int) -> str:
  return os.path.join(output, f'{prefix}-{index:05d}.stats.json')


def _decoded_stream(items: list[Item], config, tfds_source, threads: int) -> Iterator[Decoded]:
  """Decodes inputs in a thread pool (OpenCV releases the GIL), in order, a few ahead."""
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    pending: list[concurrent.futures.Future] = []
    it = iter(items)
    for item in it:
      pending.append(pool.submit(_decode, item, config, tfds_source))
      if len(pending) >= 2 * threads:
        break
    while pending:
      done = pending.pop(0).result()
      nxt = next(it, None)
      if nxt is not None:
        pending.append(pool.submit(_decode, nxt, config, tfds_source))
      yield done


def tokenize_shard(tokenizer, items: list[Item], config, output: str, prefix: str, index: int,
                   source: str, tfds_source, progress, threads: int = 4) -> dict:
  """Tokenizes ``items`` into shard ``index``; returns (and writes) its statistics."""
  from toto_jax import shards
  tk = config.tokenize
  stats = {'shard': index, 'inputs': len(items), 'clips': 0, 'frames': 0, 'tokens': 0,
           'video_seconds': 0.0, 'failures': [], 'file': None}
  records: list[bytes] = []
  batch_frames: list[np.ndarray] = []
  batch_meta: list[tuple[Decoded, int]] = []   # (input, clip index) per queued clip

  def flush():
    if not batch_frames:
      return
    frames = np.concatenate(batch_frames)
    codes = tokenizer.encode(frames)
    offset = 0
    for decoded, clip_index in batch_meta:
      t = decoded.clips[clip_index].shape[0]
      clip_codes = codes[offset:offset + t]
      offset += t
      kind = 'video' if decoded.item.kind == 'video' else 'image'
      records.append(shards.encode_record(clip_codes.astype(np.uint16), kind, source,
                                          decoded.item.label))
      stats['clips'] += 1
      stats['frames'] += t
      stats['tokens'] += int(clip_codes.size)
    batch_frames.clear()
    batch_meta.clear()

  for decoded in _decoded_stream(items, config, tfds_source, threads):
    if decoded.error is not None:
      stats['failures'].append({'input': decoded.item.key, 'error': decoded.error})
      progress.write(f'[tokenize] skipped {decoded.item.key}: {decoded.error}')
    else:
      stats['video_seconds'] += decoded.seconds
      for c, clip in enumerate(decoded.clips):
        batch_frames.append(clip)
        batch_meta.append((decoded, c))
      if sum(len(f) for f in batch_frames) >= tk.batch_frames:
        flush()
    progress.update(1)
    progress.set_postfix(clips=stats['clips'] + len(batch_meta), failed=len(stats['failures']),
                         refresh=False)
  flush()
  if records:
    path = shards.shard_path(output, prefix, index)
    shards.write_shard(path, records)
    stats['file'] = os.path.basename(path)
  io_lib.write_json(_stats_path(output, prefix, index), stats)
  return stats


def tokenize(config, input_spec: str, output: str, *, process_index: int = 0,
             process_count: int = 1, prefix: str = 'tokens', threads: int = 4,
             progress_bar: bool = True) -> dict:
  """Runs (or resumes) the job for this process; returns the manifest as written."""
  from tqdm import tqdm
  from tokenizers_jax import images as image_io

  tk, d = config.tokenize, config.data
  if tk.short_videos not in ('pad', 'skip'):
    raise ValueError(f"tokenize.short_videos must be 'pad' or 'skip', got {tk.short_videos!r}")
  if tk.records_per_shard < 1 or tk.frames < 1 or tk.stride < 1:
    raise ValueError('tokenize.records_per_shard, tokenize.frames and tokenize.stride must be >= 1')
  items, tfds_spec = list_items(input_spec, d.get('tfds_data_dir') or None)
  tfds_source = None
  if tfds_spec is not None:
    name, split, data_dir = tfds_spec
    tfds_source = image_io.TfdsImages(name, split, resolution=d.resolution, data_dir=data_dir,
                                      crop=tk.crop)
    items = [Item(str(i), 'tfds') for i in range(len(tfds_source))]
  tokenizer = load_tokenizer(config)
  os.makedirs(output, exist_ok=True)
  source = tk.source or (tfds_spec[0] if tfds_spec else
                         os.path.basename(os.path.normpath(input_spec)))

  per_shard = int(tk.records_per_shard)
  num_shards = -(-len(items) // per_shard)
  mine = [s for s in range(num_shards) if s % process_count == process_index]
  todo = [s for s in mine if not os.path.exists(_stats_path(output, prefix, s))]
  remaining_items = sum(len(items[s * per_shard:(s + 1) * per_shard]) for s in todo)
  print(f'[tokenize] {len(items)} inputs -> {num_shards} shards in {output}; process '
        f'{process_index}/{process_count} has {len(mine)} shards, {len(mine) - len(todo)} '
        f'already finished; tokenizer {tokenizer.name} ({tokenizer.codebook_size} codes, '
        f'{tokenizer.grid}x{tokenizer.grid} per frame)', flush=True)
  start = time.perf_counter()
  # One clip per input unless videos are cut into several: then the bar counts inputs.
  unit = 'clip' if tk.max_clips_per_video == 1 else 'input'
  with tqdm(total=remaining_items, unit=unit, disable=not progress_bar,
            dynamic_ncols=True, file=sys.stderr) as progress:
    for s in todo:
      tokenize_shard(tokenizer, items[s * per_shard:(s + 1) * per_shard], config, output,
                     prefix, s, source, tfds_source, progress, threads)
  elapsed = time.perf_counter() - start
  manifest = write_manifest(output, prefix, num_shards, config, tokenizer, input_spec)
  manifest['this_run'] = {'shards': len(todo), 'inputs': remaining_items, 'seconds': elapsed}
  return manifest


def write_manifest(output: str, prefix: str, num_shards: int, config, tokenizer,
                   input_spec: str) -> dict:
  """Aggregates every finished shard's statistics into ``manifest.json`` (atomically)."""
  totals = {'clips': 0, 'frames': 0, 'tokens': 0, 'video_seconds': 0.0, 'inputs': 0}
  failures, files, finished = [], [], 0
  for s in range(num_shards):
    path = _stats_path(output, prefix, s)
    if not os.path.exists(path):
      continue
    with open(path) as f:
      st = json.load(f)
    finished += 1
    for k in totals:
      totals[k] += st[k]
    failures += st['failures']
    if st['file']:
      files.append(st['file'])
  manifest = {
      'input': input_spec, 'complete': finished == num_shards, 'shards_finished': finished,
      'shards_total': num_shards, 'shard_files': files, **totals,
      'hours': totals['video_seconds'] / 3600.0, 'failed': len(failures), 'failures': failures,
      'tokenizer': tokenizer.name,
      # What launch.generate / the inspection notebook need to rebuild the decoder.
      'tokenizer_kind': config.tokenizer.kind,
      'tokenizer_weights': (os.path.abspath(config.tokenizer.weights)
                            if config.tokenizer.weights else ''),
      'codebook_size': tokenizer.codebook_size,
      'frame_h': tokenizer.grid, 'frame_w': tokenizer.grid, 'resolution': tokenizer.resolution,
      'frames_per_clip': int(config.tokenize.frames), 'stride': int(config.tokenize.stride),
      'pattern': os.path.join(os.path.abspath(output), f'{prefix}-*.array_record'),
  }
  io_lib.write_json(os.path.join(output, MANIFEST), manifest)
  return manifest


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

def main(argv) -> None:
  from absl import flags

  from launch import distributed
  del argv
  f = flags.FLAGS
  distributed.maybe_initialize()
  import jax
  index = f.process_index if f.process_index >= 0 else jax.process_index()
  count = f.process_count if f.process_count > 0 else jax.process_count()
  try:
    manifest = tokenize(f.config, f.input, f.output, process_index=index, process_count=count,
                        prefix=f.prefix, threads=f.threads)
  except (FileNotFoundError, NotADirectoryError, ValueError) as e:
    print(f'tokenize: {e}', file=sys.stderr)
    sys.exit(2)
  run = manifest['this_run']
  rate = run['inputs'] / run['seconds'] if run['seconds'] > 0 else float('nan')
  print(f"[tokenize] {'complete' if manifest['complete'] else 'partial'}: {manifest['clips']} "
        f"clips, {manifest['frames']} frames, {manifest['tokens']} tokens, "
        f"{manifest['hours']:.3f} h of video, {manifest['failed']} failed "
        f"({run['inputs']} inputs this run at {rate:.1f}/s)")
  for failure in manifest['failures']:
    print(f"  failed: {failure['input']}: {failure['error']}")
  print(f"  manifest: {os.path.join(os.path.abspath(f.output), MANIFEST)}")


if __name__ == '__main__':
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'configs/tokenizer.py:VARIANT', lock_config=True)
  flags.DEFINE_string('input', None, 'DIR of videos/images, or tfds:NAME/SPLIT')
  flags.DEFINE_string('output', None, 'output directory for token shards and manifest.json')
  flags.DEFINE_string('prefix', 'tokens', 'shard file prefix')
  flags.DEFINE_integer('process_index', -1, 'this process (default: jax.process_index())')
  flags.DEFINE_integer('process_count', 0, 'number of processes (default: jax.process_count())')
  flags.DEFINE_integer('threads', 4, 'decoding threads')
  flags.mark_flags_as_required(['config', 'input', 'output'])
  app.run(main)
