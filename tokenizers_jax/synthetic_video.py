"""Synthetic labelled videos: textured sprites moving and occluding each other over textured scenes.

The built-in pixel-video benchmark (DESIGN section 9), for demos and tests where no dataset can
be downloaded. Every video is a deterministic function of ``(seed, index)``:

* background: smooth colour noise, a two-colour gradient or oriented stripes (plus noise), with
  a slow camera pan in a random direction in half of the videos;
* the **main sprite** (the largest) of one of :data:`CLASS_NAMES`, moving at a constant speed in
  one of the 8 :data:`DIRECTION_NAMES` (image coordinates, y down, so 'up' is -y); its class is
  the video's ``label`` and its direction the ``direction`` label;
* 1-3 smaller **distractors** of other classes moving in arbitrary directions (some nearly still);
* a random depth order, so any sprite (the main one too) can be occluded.

Sprites carry a texture in their own frame (so it moves with them) and wrap around the frame
edges (a torus; start positions are chosen so the main sprite stays inside whenever its path
fits). To keep the labels learnable but not trivial, colour and texture only *tend* to go with the
class (each class has a preferred hue and texture, used about 2/3 of the time), backgrounds use
the same textures and colours, and the camera pan means global motion is not the main sprite's
motion: shape and relative motion are what identify the labels.
"""

from __future__ import annotations

import colorsys
import csv
import io
import json
import math
import os
from typing import Any

import cv2
import numpy as np

from tokenizers_jax.video import write_video

CLASS_NAMES = ('disc', 'square', 'triangle', 'ring', 'cross', 'star')
DIRECTION_NAMES = ('right', 'up-right', 'up', 'up-left', 'left', 'down-left', 'down',
                   'down-right')
NUM_CLASSES = len(CLASS_NAMES)
NUM_DIRECTIONS = len(DIRECTION_NAMES)
TEXTURES = ('dots', 'checker', 'stripes', 'rings', 'waves', 'gradient')
_CLASS_HUES = (0.0, 0.15, 0.33, 0.5, 0.65, 0.82)  # preferred hue of each class
# Class k prefers texture TEXTURES[k].
_P_CLASS_COLOUR = 0.65
_P_CLASS_TEXTURE = 0.65
BACKGROUNDS = ('noise', 'gradient', 'stripes')
LABELS_FILE = 'labels.csv'
PARAMS_FILE = 'synthetic.json'
_STREAM_TAG = 0x766964  # keeps these draws apart from other generators seeded with (seed, index)


def direction_vector(direction: int) -> tuple[float, float]:
  """Unit ``(dy, dx)`` of direction label ``direction`` (0 right, counter-clockwise, y down)."""
  a = direction * 2 * math.pi / NUM_DIRECTIONS
  return -math.sin(a), math.cos(a)


# ---------------------------------------------------------------------------------------------
# Scene parameters (cheap: no pixels), so labels can be recomputed without rendering.


def _colour(rng: np.random.Generator, hue: float) -> np.ndarray:
  s, v = rng.uniform(0.45, 1.0), rng.uniform(0.55, 1.0)
  return np.array(colorsys.hsv_to_rgb(hue % 1.0, s, v), np.float32) * 255


def _sprite(rng: np.random.Generator, cls: int, radius: float, vel: tuple[float, float],
            start: tuple[float, float]) -> dict[str, Any]:
  if rng.random() < _P_CLASS_COLOUR:
    hue = _CLASS_HUES[cls] + rng.uniform(-0.05, 0.05)
  else:
    hue = rng.random()
  c1 = _colour(rng, hue)
  c2 = c1 * rng.uniform(0.25, 0.6) if rng.random() < 0.5 else _colour(rng, hue + 0.5)
  texture = cls if rng.random() < _P_CLASS_TEXTURE else int(rng.integers(6))
  return dict(cls=cls, radius=radius, vel=vel, start=start, c1=c1, c2=c2, texture=texture,
              angle=float(rng.uniform(0, 2 * math.pi)), period=float(rng.uniform(0.45, 0.8)))


def _start_on_path(rng: np.random.Generator, length: int, radius: float, disp: float) -> float:
  """A start coordinate keeping the sprite inside [0, length) over the path if it fits."""
  lo, hi = radius - min(disp, 0.0), length - 1 - radius - max(disp, 0.0)
  return float(rng.uniform(lo, hi)) if hi > lo else float(rng.uniform(0, length))


def _scene(seed: int, index: int, frames: int, height: int, width: int) -> dict[str, Any]:
  for name, v in (('frames', frames), ('height', height), ('width', width)):
    if v < 1:
      raise ValueError(f'{name} must be >= 1, got {v}')
  if seed < 0 or index < 0:
    raise ValueError(f'seed and index must be >= 0, got seed={seed}, index={index}')
  rng = np.random.default_rng([_STREAM_TAG, int(seed), int(index)])
  side = min(height, width)
  scale = side / 48.0
  label = int(rng.integers(NUM_CLASSES))
  direction = int(rng.integers(NUM_DIRECTIONS))
  speed = float(rng.uniform(0.6, 1.2) * scale)
  dy, dx = direction_vector(direction)
  vel = (dy * speed, dx * speed)
  # The patch of a sprite of radius r is 2 * ceil(1.15 r) + 3 pixels wide; keep it inside.
  r_max = max(1.0, (side - 3) / 2 / 1.15 - 1)
  radius = min(float(rng.uniform(0.19, 0.26) * side), r_max)
  start = (_start_on_path(rng, height, radius * 1.1, vel[0] * (frames - 1)),
           _start_on_path(rng, width, radius * 1.1, vel[1] * (frames - 1)))
  sprites = [_sprite(rng, label, radius, vel, start)]
  n_distractors = int(rng.integers(1, 4))
  others = [c for c in range(NUM_CLASSES) if c != label]
  for cls in rng.choice(others, size=n_distractors, replace=False):
    a = rng.uniform(0, 2 * math.pi)
    s = float(rng.uniform(0.0, 1.3) * scale)
    sprites.append(_sprite(rng, int(cls), float(radius * rng.uniform(0.45, 0.8)),
                           (-math.sin(a) * s, math.cos(a) * s),
                           (float(rng.uniform(0, height)), float(rng.uniform(0, width)))))
  depth = rng.permutation(len(sprites))  # painting order, back to front
  pan = (0.0, 0.0)
  if rng.random() < 0.5:
    a, s = rng.uniform(0, 2 * math.pi), float(rng.uniform(0.15, 0.5) * scale)
    pan = (-math.sin(a) * s, math.cos(a) * s)
  return dict(seed=seed, index=index, frames=frames, height=height, width=width, label=label,
              direction=direction, speed=speed, sprites=sprites, depth=depth,
              background=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], pan=pan,
              noise=float(rng.uniform(0.0, 4.0)), pixel_seed=int(rng.integers(2**31)))


# ---------------------------------------------------------------------------------------------
# Rendering.


def _shape_distance(cls: int, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
  """Approximate signed distance (pixels, < 0 inside) to the outline of class ``cls``."""
  name = CLASS_NAMES[cls]
  rho = np.sqrt(u * u + v * v)
  if name == 'disc':
    return rho - 0.95 * r
  if name == 'square':
    return np.maximum(np.abs(u), np.abs(v)) - 0.78 * r
  if name == 'triangle':
    a = np.pi / 2 + np.arange(3) * 2 * np.pi / 3
    sides = u[..., None] * np.cos(a) + v[..., None] * np.sin(a)
    return sides.max(-1) - 0.5 * r
  if name == 'ring':
    return np.abs(rho - 0.68 * r) - 0.3 * r
  if name == 'cross':
    au, av = np.abs(u), np.abs(v)
    return np.minimum(np.maximum(au - r, av - 0.32 * r), np.maximum(au - 0.32 * r, av - r))
  if name == 'star':
    f = (5 * np.arctan2(v, u) / (2 * np.pi)) % 1.0
    return rho - r * (0.45 + 0.55 * np.abs(2 * f - 1))
  raise ValueError(f'unknown class {cls}')


def _texture(kind: int, u: np.ndarray, v: np.ndarray, r: float, period: float) -> np.ndarray:
  """Two-colour mixing weight in [0, 1] of texture ``TEXTURES[kind]`` in sprite coordinates."""
  p = max(2.5, period * r)
  name = TEXTURES[kind]
  if name == 'dots':
    du, dv = (u % p) - p / 2, (v % p) - p / 2
    return np.clip(p * 0.3 - np.sqrt(du * du + dv * dv) + 0.5, 0, 1)
  if name == 'checker':
    return ((np.floor(u / p) + np.floor(v / p)) % 2).astype(np.float32)
  if name == 'stripes':
    return 0.5 + 0.5 * np.sin(2 * np.pi * u / p)
  if name == 'rings':
    return 0.5 + 0.5 * np.sin(2 * np.pi * np.sqrt(u * u + v * v) / p)
  if name == 'waves':
    return 0.5 + 0.5 * np.sin(2 * np.pi * (u + 0.4 * p * np.sin(np.pi * v / p)) / p)
  return np.clip(0.5 + u / (2 * r), 0, 1)  # gradient


def _render_sprite(sp: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  """RGB ``[P, P, 3]`` and alpha ``[P, P]`` float32 patches of a sprite, centred."""
  r = sp['radius']
  size = 2 * math.ceil(1.15 * r) + 3
  c = (size - 1) / 2
  y, x = np.mgrid[0:size, 0:size].astype(np.float32) - c
  ca, sa = math.cos(sp['angle']), math.sin(sp['angle'])
  u, v = ca * x + sa * y, -sa * x + ca * y
  alpha = np.clip(0.5 - _shape_distance(sp['cls'], u, v, r), 0, 1).astype(np.float32)
  t = _texture(sp['texture'], u, v, r, sp['period'])[..., None]
  shade = (1.0 - 0.15 * np.clip(y / r, -1, 1))[..., None]  # lit from above
  rgb = (sp['c1'] * t + sp['c2'] * (1 - t)) * shade
  return rgb.astype(np.float32), alpha


def _background(scene: dict[str, Any], rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """Float32 RGB ``[h, w, 3]`` background canvas."""
  c1 = _colour(rng, rng.random())
  c2 = _colour(rng, rng.random()) * rng.uniform(0.4, 1.0)
  kind = scene['background']
  if kind == 'noise':
    gh, gw = int(rng.integers(3, 8)), int(rng.integers(3, 8))
    t = cv2.resize(rng.random((gh, gw), dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    t = np.clip(t, 0, 1)
  else:
    a = rng.uniform(0, 2 * math.pi)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    proj = x * math.cos(a) + y * math.sin(a)
    if kind == 'gradient':
      t = (proj - proj.min()) / max(1e-6, float(proj.max() - proj.min()))
    else:
      period = rng.uniform(0.12, 0.3) * min(scene['height'], scene['width'])
      t = 0.5 + 0.5 * np.sin(2 * np.pi * proj / period)
  detail = cv2.resize(rng.random((max(2, h // 4), max(2, w // 4), 3), dtype=np.float32),
                      (w, h), interpolation=cv2.INTER_LINEAR)
  out = c1 * t[..., None] + c2 * (1 - t[..., None])
  return out + (detail - 0.5) * rng.uniform(10, 50)


def _render(scene: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Frames uint8 ``[T, H, W, 3]``, main-sprite visibility ``[T, H, W]`` and its centres."""
  frames, h, w = scene['frames'], scene['height'], scene['width']
  rng = np.random.default_rng(scene['pixel_seed'])
  t = np.arange(frames, dtype=np.float64)
  # Background with a camera pan: a larger canvas, viewed through a moving window.
  py, px = scene['pan']
  pad_y, pad_x = math.ceil(abs(py) * (frames - 1)), math.ceil(abs(px) * (frames - 1))
  bg = _background(scene, rng, h + pad_y, w + pad_x)
  oy = np.rint(py * t - min(0.0, py * (frames - 1))).astype(np.int64)
  ox = np.rint(px * t - min(0.0, px * (frames - 1))).astype(np.int64)
  canvas = np.empty((frames, h, w, 3), np.float32)
  for i in range(frames):
    canvas[i] = bg[oy[i]:oy[i] + h, ox[i]:ox[i] + w]
  # Sprites are pasted through flat pixel indices (one gather and one scatter per sprite).
  flat = canvas.reshape(-1, 3)
  owner = np.full(frames * h * w, -1, np.int8)  # front-most sprite at each pixel
  base = (np.arange(frames) * (h * w))[:, None, None]
  centres = np.zeros((frames, 2), np.float64)
  for k in scene['depth']:
    sp = scene['sprites'][k]
    rgb, alpha = _render_sprite(sp)
    size = alpha.shape[0]
    c = (size - 1) / 2
    top = np.rint(sp['start'][0] + sp['vel'][0] * t - c).astype(np.int64)
    left = np.rint(sp['start'][1] + sp['vel'][1] * t - c).astype(np.int64)
    ys = (top[:, None] + np.arange(size)) % h
    xs = (left[:, None] + np.arange(size)) % w
    idx = (base + ys[:, :, None] * w + xs[:, None, :]).reshape(-1)
    a = np.broadcast_to(alpha[None], (frames, size, size)).reshape(-1, 1)
    region = np.take(flat, idx, axis=0)
    flat[idx] = region + (np.broadcast_to(rgb[None], (frames, size, size, 3)).reshape(-1, 3)
                          - region) * a
    owner[idx[a[:, 0] > 0.5]] = k
    if k == 0:
      centres[:, 0], centres[:, 1] = (top + c) % h, (left + c) % w
  if scene['noise'] > 0:  # sensor noise; random bytes are ~20x faster than rng.normal here
    noise = np.frombuffer(rng.bytes(canvas.size), np.int8).reshape(canvas.shape)
    canvas += noise.astype(np.float32) * np.float32(scene['noise'] / 74.0)  # int8 std ~74
  np.maximum(canvas, 0, out=canvas)
  # Rounds and saturates at 255 in one pass (a fast clip + round + astype).
  video = cv2.convertScaleAbs(canvas.reshape(frames * h, w, 3)).reshape(frames, h, w, 3)
  return video, owner.reshape(frames, h, w) == 0, centres


def _info(scene: dict[str, Any]) -> dict[str, Any]:
  main = scene['sprites'][0]
  return dict(label=scene['label'], class_name=CLASS_NAMES[scene['label']],
              direction=scene['direction'], direction_name=DIRECTION_NAMES[scene['direction']],
              speed=scene['speed'], velocity=main['vel'], radius=main['radius'],
              texture=TEXTURES[main['texture']],
              distractors=[CLASS_NAMES[s['cls']] for s in scene['sprites'][1:]],
              distractor_radii=[s['radius'] for s in scene['sprites'][1:]],
              depth_order=[int(k) for k in scene['depth']], background=scene['background'],
              pan=scene['pan'], seed=scene['seed'], index=scene['index'])


def make_video(seed: int, index: int, *, frames: int, height: int,
               width: int) -> tuple[np.ndarray, dict[str, Any]]:
  """Renders video ``index`` of stream ``seed``: (uint8 RGB ``[frames, height, width, 3]``, info).

  ``info``: ``label`` (class id of the main sprite), ``class_name``, ``direction`` (0..7),
  ``direction_name``, ``speed`` (pixels/frame), ``velocity`` ``(vy, vx)``, ``radius``,
  ``texture``, ``distractors`` (class names), ``distractor_radii``, ``depth_order`` (back to
  front, 0 is the main sprite), ``background``, ``pan`` (camera velocity in pixels/frame; the
  background appears to move the opposite way), and for checking:
  ``centres`` float ``[frames, 2]`` (y, x) of the main sprite (modulo the frame, as drawn) and
  ``mask`` bool ``[frames, H, W]`` of its visible pixels.
  """
  scene = _scene(seed, index, frames, height, width)
  video, mask, centres = _render(scene)
  info = _info(scene)
  info.update(centres=centres, mask=mask)
  return video, info


def video_labels(seed: int, index: int, *, frames: int, height: int,
                 width: int) -> dict[str, Any]:
  """The ``info`` of :func:`make_video` without rendering (no ``centres``/``mask``): fast."""
  return _info(_scene(seed, index, frames, height, width))


# ---------------------------------------------------------------------------------------------
# Files.


def _write_text_atomic(path: str, text: str) -> None:
  tmp = f'{path}.{os.getpid()}.tmp'
  try:
    with open(tmp, 'w', newline='') as f:
      f.write(text)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_synthetic_videos(output_dir: str, num_videos: int, *, frames: int = 32,
                           height: int = 48, width: int = 64, fps: float = 8, seed: int = 0,
                           split_name: str = 'train', start_index: int = 0,
                           progress: bool = True) -> str:
  """Writes ``{output_dir}/{split_name}/{index:05d}.mp4`` and its ``labels.csv``; returns the csv.

  Videos ``start_index .. start_index + num_videos - 1`` of stream ``seed`` (use different seeds
  or disjoint index ranges for different splits). Resumable: every file is written atomically,
  so an existing video is complete and is kept; leftover temporary files of an interrupted run
  are removed and their videos redone. The parameters are recorded in ``synthetic.json``; a rerun
  with different ones raises ValueError instead of mixing videos. ``labels.csv`` (columns file,
  label, class_name, direction, direction_name) is written last, atomically.
  """
  from tqdm.auto import tqdm

  if num_videos < 0:
    raise ValueError(f'num_videos must be >= 0, got {num_videos}')
  if height % 2 or width % 2:
    raise ValueError(f'height and width must be even for mp4, got {height}x{width}')
  split_dir = os.path.join(os.fspath(output_dir), split_name)
  os.makedirs(split_dir, exist_ok=True)
  params = dict(frames=frames, height=height, width=width, fps=fps, seed=seed)
  params_path = os.path.join(split_dir, PARAMS_FILE)
  if os.path.exists(params_path):
    with open(params_path) as f:
      old = json.load(f)
    if old != params:
      raise ValueError(f'{split_dir!r} holds synthetic videos made with {old}, not {params}: '
                       f'use another output directory')
  else:
    _write_text_atomic(params_path, json.dumps(params, indent=1) + '\n')
  for name in os.listdir(split_dir):  # leftovers of an interrupted write_video
    if name.startswith('.') and name.endswith('.tmp.mp4'):
      os.remove(os.path.join(split_dir, name))

  rows = []
  kw = dict(frames=frames, height=height, width=width)
  bar = tqdm(total=num_videos, desc=f'synthetic videos ({split_name})', unit='video',
             disable=not progress)
  with bar:
    for index in range(start_index, start_index + num_videos):
      name = f'{index:05d}.mp4'
      path = os.path.join(split_dir, name)
      if os.path.isfile(path) and os.path.getsize(path) > 0:
        info = video_labels(seed, index, **kw)
      else:
        video, info = make_video(seed, index, **kw)
        write_video(path, video, fps)
      rows.append((name, info['label'], info['class_name'], info['direction'],
                   info['direction_name']))
      bar.update(1)

  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator='\n')
  writer.writerow(('file', 'label', 'class_name', 'direction', 'direction_name'))
  writer.writerows(rows)
  labels_path = os.path.join(split_dir, LABELS_FILE)
  text = buf.getvalue()
  if not os.path.exists(labels_path) or open(labels_path, newline='').read() != text:
    _write_text_atomic(labels_path, text)
  return labels_path


def read_labels(path: str) -> dict[str, dict[str, Any]]:
  """Labels of synthetic videos: ``{file: {label, class_name, direction, direction_name, path}}``.

  ``path`` is a ``labels.csv``, a split directory holding one, or an output directory whose
  split subdirectories hold them. Keys are file paths relative to the directory given (or the
  csv's directory), e.g. '00000.mp4' or 'train/00000.mp4'; ``path`` in each value is absolute.
  """
  path = os.fspath(path)
  if os.path.isfile(path):
    csvs, base = [path], os.path.dirname(os.path.abspath(path))
  elif os.path.isdir(path):
    base = os.path.abspath(path)
    own = os.path.join(path, LABELS_FILE)
    csvs = [own] if os.path.isfile(own) else sorted(
        os.path.join(path, d, LABELS_FILE) for d in os.listdir(path)
        if os.path.isfile(os.path.join(path, d, LABELS_FILE)))
    if not csvs:
      raise FileNotFoundError(f'no {LABELS_FILE} in {path!r} or its subdirectories')
  else:
    raise FileNotFoundError(f'labels path {path!r} does not exist')
  out: dict[str, dict[str, Any]] = {}
  for csv_path in csvs:
    csv_dir = os.path.dirname(os.path.abspath(csv_path))
    with open(csv_path, newline='') as f:
      reader = csv.DictReader(f)
      missing = {'file', 'label', 'class_name', 'direction'} - set(reader.fieldnames or ())
      if missing:
        raise ValueError(f'labels file {csv_path!r}: missing columns {sorted(missing)}')
      for line, row in enumerate(reader, start=2):
        try:
          label, direction = int(row['label']), int(row['direction'])
        except (TypeError, ValueError) as e:
          raise ValueError(f'labels file {csv_path!r} line {line}: bad label/direction') from e
        full = os.path.join(csv_dir, row['file'])
        out[os.path.relpath(full, base)] = dict(
            label=label, class_name=row['class_name'], direction=direction,
            direction_name=row.get('direction_name') or DIRECTION_NAMES[direction % 8],
            path=full)
  return out


def main(argv: list[str] | None = None) -> None:
  """``python -m tokenizers_jax.synthetic_video --output DIR [--train N --val M ...]``.

  Writes ``DIR/train`` (stream ``seed``) and ``DIR/val`` (stream ``seed + 1``, so never the same
  videos), each with its ``labels.csv``; rerunning resumes.
  """
  import argparse

  p = argparse.ArgumentParser(prog='python -m tokenizers_jax.synthetic_video',
                              description=main.__doc__.split('\n')[0])
  p.add_argument('--output', required=True, help='output directory')
  p.add_argument('--train', type=int, default=256, help='number of training videos')
  p.add_argument('--val', type=int, default=64, help='number of validation videos')
  p.add_argument('--frames', type=int, default=32)
  p.add_argument('--height', type=int, default=48)
  p.add_argument('--width', type=int, default=64)
  p.add_argument('--fps', type=float, default=8)
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args(argv)
  kw = dict(frames=args.frames, height=args.height, width=args.width, fps=args.fps)
  for split, n, seed in (('train', args.train, args.seed), ('val', args.val, args.seed + 1)):
    if n > 0:
      print(write_synthetic_videos(args.output, n, seed=seed, split_name=split, **kw))


if __name__ == '__main__':
  main()
