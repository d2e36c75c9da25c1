r"""Pictures from a tokenizer: reconstruction grids, and token records decoded to GIF / mp4.

  python -m launch.pictures recon --config configs/tokenizer.py:vq_tiny \
      --config.tokenizer.weights=runs/demo/vq_tiny --input runs/demo/videos/val --output recon.png
  python -m launch.pictures decode --config configs/tokenizer.py:vq_tiny \
      --config.tokenizer.weights=runs/demo/vq_tiny \
      --shard runs/demo/tokens/val/tokens-00000.array_record --record 3 --output clip.gif

``recon`` encodes and decodes the first frames of ``--count`` videos (or images) of ``--input`` and
writes originals above reconstructions with their PSNR; ``decode`` turns one record of a token
shard (a clip or an image) back into frames.
"""

from __future__ import annotations

import sys

import numpy as np


def reconstruction_png(config, input_dir: str, output: str, count: int = 16) -> float:
  """Grid of ``count`` frames of ``input_dir`` and their reconstructions; returns mean PSNR."""
  from launch import tokenize as tokenize_lib
  from tokenizers_jax import images as image_io
  from tokenizers_jax import pictures
  from tokenizers_jax import video as video_io

  tokenizer = tokenize_lib.load_tokenizer(config)
  items, _ = tokenize_lib.list_items(input_dir)
  frames = []
  for item in items:
    if len(frames) >= count:
      break
    try:
      if item.kind == 'video':
        frames.append(video_io.read_clip(item.key, frames=1, stride=1,
                                         resolution=tokenizer.resolution)[0])
      else:
        frames.append(image_io.read_image(item.key, resolution=tokenizer.resolution))
    except video_io.InputError as e:
      print(f'[pictures] skipped {item.key}: {e}', file=sys.stderr)
  if not frames:
    raise ValueError(f'--input: no readable video or image in {input_dir!r}')
  frames = np.stack(frames)
  return pictures.reconstruction_grid(frames, tokenizer.decode(tokenizer.encode(frames)), output)


def decode_record(config, shard: str, record: int, output: str, fps: float = 4.0) -> np.ndarray:
  """Decodes record ``record`` of ``shard`` to ``output`` (.gif or .mp4); returns the frames."""
  import os

  from array_record.python import array_record_data_source

  from launch import tokenize as tokenize_lib
  from tokenizers_jax import pictures
  from toto_jax import shards

  if not os.path.exists(shard):
    raise FileNotFoundError(f'--shard: {shard!r} does not exist')
  source = array_record_data_source.ArrayRecordDataSource([shard])
  if not 0 <= record < len(source):
    raise ValueError(f'--record: {shard!r} holds records 0..{len(source) - 1}, got {record}')
  codes = shards.decode_record(source[record])['codes'].astype(np.int32)
  tokenizer = tokenize_lib.load_tokenizer(config)
  return pictures.codes_to_video(tokenizer, codes, output, fps=fps)


def main(argv) -> None:
  from absl import flags
  f = flags.FLAGS
  if len(argv) != 2 or argv[1] not in ('recon', 'decode'):
    print('usage: python -m launch.pictures (recon|decode) --config ... (see --help)',
          file=sys.stderr)
    sys.exit(2)
  try:
    if argv[1] == 'recon':
      if not f.input:
        raise ValueError('recon needs --input DIR')
      psnr = reconstruction_png(f.config, f.input, f.output, f.count)
      print(f'[pictures] {f.output}: mean PSNR {psnr:.2f} dB')
    else:
      if not f.shard:
        raise ValueError('decode needs --shard FILE')
      frames = decode_record(f.config, f.shard, f.record, f.output, f.fps)
      print(f'[pictures] {f.output}: {frames.shape[0]} frames of {frames.shape[1]}x'
            f'{frames.shape[2]}')
  except (FileNotFoundError, ValueError) as e:
    print(f'pictures: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'configs/tokenizer.py:VARIANT', lock_config=True)
  flags.DEFINE_string('output', None, 'output .png (recon) or .gif/.mp4 (decode)')
  flags.DEFINE_string('input', '', 'recon: DIR of videos or images')
  flags.DEFINE_integer('count', 16, 'recon: number of frames')
  flags.DEFINE_string('shard', '', 'decode: a token shard (.array_record)')
  flags.DEFINE_integer('record', 0, 'decode: record index in the shard')
  flags.DEFINE_float('fps', 4.0, 'decode: frames per second')
  flags.mark_flags_as_required(['config', 'output'])
  app.run(main)
