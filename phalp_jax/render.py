"""Pictures of tracker output: boxes and ids in a stable colour per id, over video frames or a
blank canvas, written as an ``.mp4`` (DESIGN 6, "Output and pictures").

* Colour: id ``i`` gets hue ``frac(i * 0.618...)`` (multiplicative hashing with the golden ratio,
  so consecutive ids land far apart on the hue circle) and one of three saturation/value levels
  from a second hash, so an id has the same colour in every frame, every video and every run.
* Geometry: rows are in the pixel coordinates of ``image_size`` (h, w), the detections' frame
  size. The output is scaled to at most ``width`` pixels wide (default 640; never upscaled) and
  both sides are rounded to even numbers, as the mp4v writer needs
  (:func:`tokenizers_jax.video.write_video`, atomic). Frames of a different size than
  ``image_size`` are resized to the output size; boxes are scaled from ``image_size``.
* Frames: ``None`` draws on a dark canvas (synthetic scenes have no pixels); a path is read
  with OpenCV frame by frame; an array or iterable gives RGB ``uint8 [H, W, 3]`` frames. A frame
  number is drawn in the top-left corner.

Memory: ``write_video`` takes the whole clip as one array, so a render holds
``T x H_out x W_out x 3`` bytes (640 x 360: 0.7 MB per frame, about 1.2 GB per minute at 30 fps);
lower ``width`` for long videos.
"""

from __future__ import annotations

import colorsys
import os
import zlib
from collections.abc import Iterable, Iterator

import cv2
import numpy as np

DEFAULT_WIDTH = 640
CANVAS_GREY = 40
_GOLDEN = 0.6180339887498949
_LEVELS = ((0.85, 1.0), (0.65, 0.9), (1.0, 0.75))  # (saturation, value) per hash bucket


def id_colour(track_id: int) -> tuple[int, int, int]:
  """The RGB ``uint8`` colour of ``track_id``: the same for an id everywhere (see module doc)."""
  i = int(track_id)
  hue = (i * _GOLDEN) % 1.0
  sat, val = _LEVELS[zlib.crc32(i.to_bytes(8, 'little', signed=True)) % len(_LEVELS)]
  r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
  return int(round(255 * r)), int(round(255 * g)), int(round(255 * b))


def output_size(image_size: tuple[int, int], width: int = DEFAULT_WIDTH) -> tuple[int, int]:
  """``(h, w)`` of the rendered frames: ``image_size`` scaled to at most ``width`` wide (never
  up), both even and at least 2."""
  h, w = (int(v) for v in image_size)
  if h <= 0 or w <= 0:
    raise ValueError(f'render: image_size must be positive (h, w), got {image_size}')
  if width < 2:
    raise ValueError(f'render: width must be >= 2, got {width}')
  scale = min(1.0, width / w)
  even = lambda v: max(2, 2 * int(round(v * scale / 2)))  # nearest even
  return even(h), even(w)


def _video_frames(path: str) -> Iterator[np.ndarray]:
  from phalp_jax.shots import read_frames  # OpenCV, BGR
  for frame in read_frames(path):
    yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def _check_rows(rows: np.ndarray) -> np.ndarray:
  rows = np.asarray(rows, np.float64)
  if rows.size == 0:
    return np.zeros((0, 7))
  if rows.ndim != 2 or rows.shape[1] < 6:
    raise ValueError(f'render: rows must have shape [N, 6 or 7] (frame, id, x, y, w, h[, conf]), '
                     f'got {rows.shape}')
  return rows


def draw_frame(canvas: np.ndarray, rows: np.ndarray, scale: tuple[float, float],
               frame_number: int | None = None) -> np.ndarray:
  """Draws one frame's rows (boxes + id labels) on the RGB ``uint8`` canvas, in place.

  ``scale`` = (sx, sy) maps row pixels to canvas pixels."""
  h, w = canvas.shape[:2]
  thick = max(1, int(round(min(h, w) / 240)))
  font_scale = max(0.35, min(h, w) / 720)
  sx, sy = scale
  for r in rows:
    tid = int(r[1])
    colour = id_colour(tid)
    x0, y0 = int(round(r[2] * sx)), int(round(r[3] * sy))
    x1, y1 = int(round((r[2] + r[4]) * sx)), int(round((r[3] + r[5]) * sy))
    cv2.rectangle(canvas, (x0, y0), (x1, y1), colour, thick, cv2.LINE_AA)
    label = str(tid)
    (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thick)
    ly = y0 - 2 if y0 - th - base - 2 >= 0 else y0 + th + base + 2  # inside when at the top
    lx = min(max(x0, 0), max(w - tw - 2, 0))
    cv2.rectangle(canvas, (lx, ly - th - base), (lx + tw + 2, ly + 1), colour, -1)
    text = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
    cv2.putText(canvas, label, (lx + 1, ly - base + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                text, thick, cv2.LINE_AA)
  if frame_number is not None:
    cv2.putText(canvas, f't={frame_number}', (4, int(14 * font_scale / 0.5)),
                cv2.FONT_HERSHEY_SIMPLEX, font_scale, (230, 230, 230), 1, cv2.LINE_AA)
  return canvas


def render_tracks(rows: np.ndarray, frames: str | os.PathLike | np.ndarray |
                  Iterable[np.ndarray] | None, image_size: tuple[int, int],
                  path: str | os.PathLike, fps: float = 30.0, *, num_frames: int | None = None,
                  width: int = DEFAULT_WIDTH) -> str:
  """Renders track rows ``(frame, id, x, y, w, h[, conf])`` (0-based frames) to an ``.mp4``.

  ``frames``: None (blank canvas), a video path, or RGB ``uint8 [H, W, 3]`` frames.
  ``num_frames``: frames to write (default: as many as ``frames`` holds, else the last row's
  frame + 1; a video with fewer frames is padded with blank canvas, extra ones are dropped).
  Returns the path written.
  """
  from tokenizers_jax.video import write_video
  rows = _check_rows(rows)
  path = os.fspath(path)
  out_h, out_w = output_size(image_size, width)
  sx, sy = out_w / float(image_size[1]), out_h / float(image_size[0])
  if frames is None:
    source: Iterator[np.ndarray] | None = None
  elif isinstance(frames, (str, os.PathLike)):
    source = _video_frames(os.fspath(frames))
  else:
    source = iter(frames)
  if num_frames is None:
    if frames is not None and not isinstance(frames, (str, os.PathLike)) and hasattr(
        frames, '__len__'):
      num_frames = len(frames)  # type: ignore[arg-type]
    elif isinstance(frames, (str, os.PathLike)):
      from tokenizers_jax.video import probe_video  # counts decodable frames (one grab pass)
      num_frames = probe_video(os.fspath(frames)).frames
    elif source is not None:
      listed = list(source)  # a generator: count by reading
      num_frames, source = len(listed), iter(listed)
    else:
      num_frames = int(rows[:, 0].max()) + 1 if len(rows) else 1
  num_frames = max(1, int(num_frames))
  frame_of = rows[:, 0].astype(np.int64)
  order = np.argsort(frame_of, kind='stable')
  bounds = np.searchsorted(frame_of[order], np.arange(num_frames + 1), side='left')
  video = np.empty((num_frames, out_h, out_w, 3), np.uint8)
  for t in range(num_frames):
    image = next(source, None) if source is not None else None
    if image is None:
      video[t] = CANVAS_GREY
    else:
      image = np.asarray(image)
      if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f'render: frames must be RGB uint8 [H, W, 3], got {image.dtype} '
                         f'{image.shape} at frame {t}')
      video[t] = cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_AREA) if (
          image.shape[:2] != (out_h, out_w)) else image
    draw_frame(video[t], rows[order[bounds[t]:bounds[t + 1]]], (sx, sy), t)
  return write_video(path, video, fps)
