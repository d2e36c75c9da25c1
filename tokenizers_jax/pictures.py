"""Pictures a person would rather look at than read: reconstruction grids and decoded token clips."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from tokenizers_jax import video as video_io
from tokenizers_jax.vq import psnr


def _upscale(images: np.ndarray, min_size: int = 96) -> np.ndarray:
  """Nearest-neighbour upscaling of small frames so single pixels stay visible."""
  factor = max(1, -(-min_size // images.shape[-2]))
  return images.repeat(factor, axis=-3).repeat(factor, axis=-2)


def reconstruction_grid(originals: np.ndarray, reconstructions: np.ndarray, path: str, *,
                        columns: int = 8, title: str | None = None) -> float:
  """Writes a PNG of originals (odd rows) above their reconstructions (even rows), each
  reconstruction labelled with its PSNR; returns the mean PSNR in dB."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  originals, reconstructions = np.asarray(originals), np.asarray(reconstructions)
  if originals.shape != reconstructions.shape or originals.ndim != 4:
    raise ValueError(f'reconstruction_grid: originals {originals.shape} and reconstructions '
                     f'{reconstructions.shape} must both be [N, H, W, 3]')
  n = originals.shape[0]
  scores = psnr(originals, reconstructions)
  rows = -(-n // columns)
  fig, axes = plt.subplots(2 * rows, columns, figsize=(1.4 * columns, 2.9 * rows), squeeze=False)
  for ax in axes.ravel():
    ax.axis('off')
  for i in range(n):
    r, c = divmod(i, columns)
    axes[2 * r, c].imshow(originals[i], interpolation='nearest')
    axes[2 * r + 1, c].imshow(reconstructions[i], interpolation='nearest')
    axes[2 * r + 1, c].set_title(f'{scores[i]:.1f} dB', fontsize=7)
  fig.suptitle(title or f'originals (upper) vs reconstructions (lower); mean PSNR '
               f'{scores.mean():.2f} dB', fontsize=9)
  fig.tight_layout()
  save_figure(fig, path)
  return float(scores.mean())


def save_figure(fig, path: str, dpi: int = 110) -> None:
  """Saves a matplotlib figure atomically (temporary file, then rename) and closes it."""
  import matplotlib.pyplot as plt
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  root, ext = os.path.splitext(path)
  tmp = f'{root}.tmp{ext or ".png"}'
  fig.savefig(tmp, dpi=dpi)
  os.replace(tmp, path)
  plt.close(fig)


def clip_strip(rows: Sequence[np.ndarray], labels: Sequence[str], path: str,
               title: str = '') -> None:
  """Writes a PNG with one labelled row of frames per array ``[T, H, W, 3]``."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  frames = max(r.shape[0] for r in rows)
  fig, axes = plt.subplots(len(rows), frames, figsize=(1.2 * frames, 1.35 * len(rows)),
                           squeeze=False)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
    ax.axis('off')
  for i, (row, label) in enumerate(zip(rows, labels)):
    for t in range(row.shape[0]):
      axes[i, t].imshow(row[t], interpolation='nearest')
      axes[i, t].axis('on')
      axes[i, t].set_xticks([])
      axes[i, t].set_yticks([])
      if i == 0:
        axes[i, t].set_title(f't={t}', fontsize=7)
    axes[i, 0].set_ylabel(label, fontsize=7)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  save_figure(fig, path)


def codes_to_video(tokenizer, codes: np.ndarray, path: str, fps: float = 4.0,
                   min_size: int = 96) -> np.ndarray:
  """Decodes codes ``[T, h, w]`` to frames and writes them to ``path`` (``.gif`` or ``.mp4``);
  returns the decoded uint8 frames ``[T, H, W, 3]``."""
  codes = np.asarray(codes)
  if codes.ndim != 3:
    raise ValueError(f'codes_to_video: expected codes [T, h, w], got shape {codes.shape}')
  frames = tokenizer.decode(codes)
  big = _upscale(frames, min_size)
  ext = os.path.splitext(path)[1].lower()
  if ext == '.gif':
    video_io.write_gif(path, big, fps)
  elif ext in ('.mp4', '.m4v'):
    video_io.write_video(path, big, fps)
  else:
    raise ValueError(f'codes_to_video: {path!r} must end in .gif or .mp4')
  return frames
