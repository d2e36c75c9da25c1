"""Video reading and writing for the tokenizers: clips of T frames, R x R, sampled every k-th frame.

The Toto recipe: resize every frame so its short side is ``R`` pixels, take an ``R x R`` crop
(random for training, centre for evaluation, the same offset for every frame of a clip), keep
every ``stride``-th frame and group ``frames`` of them into a clip (T=16, R=128, stride 4 in the
paper).

Files are read sequentially with ``cv2.VideoCapture`` (FFmpeg backend): frames that are skipped
are only ``grab()``-ed, kept ones ``retrieve()``-d, so a long video streams in constant memory.
A file that cannot be opened, holds no frames or is too short for ``short='skip'`` raises
:class:`VideoError` (a ``ValueError`` carrying ``.path``), so a job over many files can skip the
bad ones and go on. :func:`resize_short_side` and :func:`crop_square` are the one implementation of
the geometry, shared with ``tokenizers_jax.images``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v')
CROP_MODES = ('center', 'random')
SHORT_POLICIES = ('pad', 'skip')
# Local files never need these, but a stalled network mount must not hang a tokenization job.
_CAPTURE_PARAMS = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 30000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 30000]


class InputError(ValueError):
  """An input file that cannot be used; ``.path`` names it and ``.reason`` says why."""
  kind = 'input'

  def __init__(self, path: str, reason: str):
    super().__init__(f'{self.kind} {str(path)!r}: {reason}')
    self.path = str(path)
    self.reason = reason

  def __reduce__(self):  # survives pickling (errors raised in worker processes)
    return type(self), (self.path, self.reason)


class VideoError(InputError):
  """A video file that cannot be used (missing, unopenable, corrupt, empty or too short)."""
  kind = 'video'


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """What :func:`probe_video` learnt about a file.

  ``frames`` is the number of frames that actually decode; ``header_frames`` is what the container
  claims (-1 if unknown). They differ for truncated or damaged files, where the header still
  describes the whole video.
  """
  path: str
  frames: int
  fps: float
  height: int
  width: int
  duration_s: float
  header_frames: int = -1


# ---------------------------------------------------------------------------------------------
# Geometry, shared with images.py.


def resize_short_side(frame: np.ndarray, size: int) -> np.ndarray:
  """Resizes an ``[H, W(, C)]`` image so that ``min(H, W) == size``, keeping the aspect ratio.

  INTER_AREA when shrinking (no aliasing), INTER_CUBIC when enlarging; unchanged if already there.
  """
  if size < 1:
    raise ValueError(f'resize size must be >= 1, got {size}')
  h, w = frame.shape[:2]
  if min(h, w) == size:
    return frame
  if h <= w:
    new_h, new_w = size, max(size, int(round(w * size / h)))
  else:
    new_h, new_w = max(size, int(round(h * size / w))), size
  interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_CUBIC
  out = cv2.resize(frame, (new_w, new_h), interpolation=interp)
  if frame.ndim == 3 and out.ndim == 2:  # cv2 drops a trailing channel axis of size 1
    out = out[..., None]
  return out


def crop_offset(height: int, width: int, size: int, mode: str = 'center',
                rng: np.random.Generator | None = None) -> tuple[int, int]:
  """Top-left ``(y, x)`` of a ``size x size`` crop of an ``height x width`` image.

  ``mode='center'`` centres it; ``'random'`` draws it uniformly from ``rng`` (a fresh,
  unseeded generator if None, so pass one for reproducible crops).
  """
  if mode not in CROP_MODES:
    raise ValueError(f'crop mode must be one of {CROP_MODES}, got {mode!r}')
  if height < size or width < size:
    raise ValueError(f'cannot crop {size}x{size} from a {height}x{width} image')
  if mode == 'center':
    return (height - size) // 2, (width - size) // 2
  rng = np.random.default_rng() if rng is None else rng
  return int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))


def crop_square(frame: np.ndarray, size: int, mode: str = 'center',
                rng: np.random.Generator | None = None,
                offset: tuple[int, int] | None = None) -> np.ndarray:
  """Crops ``size x size`` from an ``[H, W(, C)]`` image at ``offset`` or one from ``mode``.

  A given ``offset`` (e.g. one drawn once per clip with :func:`crop_offset`) is clamped into
  the image, so a frame whose size changed mid-video still gets a valid crop.
  """
  h, w = frame.shape[:2]
  if offset is None:
    y, x = crop_offset(h, w, size, mode, rng)
  else:
    if h < size or w < size:
      raise ValueError(f'cannot crop {size}x{size} from a {h}x{w} image')
    y, x = min(max(int(offset[0]), 0), h - size), min(max(int(offset[1]), 0), w - size)
  return frame[y:y + size, x:x + size]


# ---------------------------------------------------------------------------------------------
# Reading.


def _open(path: str) -> cv2.VideoCapture:
  """Opens ``path`` with the FFmpeg backend (never the image-sequence one), or raises VideoError."""
  if not os.path.exists(path):
    raise VideoError(path, 'does not exist')
  if not os.path.isfile(path):  # a directory, or a FIFO/device FFmpeg could block on
    raise VideoError(path, 'is not a regular file')
  if os.path.getsize(path) == 0:
    raise VideoError(path, 'is empty (0 bytes)')
  try:
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, _CAPTURE_PARAMS)
  except cv2.error as e:
    raise VideoError(path, f'cannot be opened ({e})') from e
  if not cap.isOpened():
    cap.release()
    raise VideoError(path, 'cannot be opened (corrupt or unsupported container)')
  return cap


def _header(cap: cv2.VideoCapture) -> tuple[int, float, int, int]:
  frames = cap.get(cv2.CAP_PROP_FRAME_COUNT)
  fps = cap.get(cv2.CAP_PROP_FPS)
  frames = int(frames) if np.isfinite(frames) and frames > 0 else -1
  fps = float(fps) if np.isfinite(fps) and fps > 0 else 0.0
  return (frames, fps, int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
          int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)))


def probe_video(path: str, *, exact: bool = True) -> VideoInfo:
  """Frame count, fps and size of a video file.

  With ``exact=True`` (default) the frames are counted by ``grab()``-ing through the whole file:
  one decoding pass without colour conversion (milliseconds for a short clip, about a real-time
  fraction of a minute for an hour of HD video). It is the only count to trust for truncated or
  damaged files, whose container header still claims the full length. ``exact=False`` returns
  the header's count (instant; falls back to counting when the header has none).
  """
  path = os.fspath(path)
  cap = _open(path)
  try:
    header_frames, fps, height, width = _header(cap)
    if exact or header_frames < 0:
      frames = 0
      while cap.grab():
        frames += 1
    else:
      frames = header_frames
  except cv2.error as e:
    raise VideoError(path, f'cannot be decoded ({str(e).strip()})') from e
  finally:
    cap.release()
  if frames == 0:
    raise VideoError(path, 'contains no frames')
  duration = frames / fps if fps > 0 else 0.0
  return VideoInfo(path=path, frames=frames, fps=fps, height=height, width=width,
                   duration_s=duration, header_frames=header_frames)


def _check_clip_args(frames: int, stride: int, resolution: int, crop: str, short: str,
                     max_clips: int | None) -> None:
  for name, v in (('frames', frames), ('stride', stride), ('resolution', resolution)):
    if not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f'{name} must be an integer >= 1, got {v!r}')
  if crop not in CROP_MODES:
    raise ValueError(f'crop must be one of {CROP_MODES}, got {crop!r}')
  if short not in SHORT_POLICIES:
    raise ValueError(f'short must be one of {SHORT_POLICIES}, got {short!r}')
  if max_clips is not None and max_clips < 0:
    raise ValueError(f'max_clips must be >= 0 or None, got {max_clips!r}')


def read_clips(path: str, *, frames: int, stride: int = 4, resolution: int, crop: str = 'center',
               rng: np.random.Generator | None = None, max_clips: int | None = None,
               short: str = 'pad') -> Iterator[np.ndarray]:
  """Yields uint8 RGB clips ``[frames, resolution, resolution, 3]`` of a video, in order.

  Clip ``k`` covers source frames ``[k * frames * stride, (k + 1) * frames * stride)`` and keeps
  every ``stride``-th of them (non-overlapping windows); it needs ``(frames - 1) * stride + 1``
  source frames. Each kept frame is resized to short side ``resolution`` and cropped, with one
  crop offset per clip (drawn from ``rng`` per clip when ``crop='random'``).

  A video too short for even one clip: ``short='pad'`` repeats its last sampled frame up to
  ``frames``, ``short='skip'`` raises VideoError naming the counts. Later partial windows are
  dropped. Arguments are checked when called; file errors (VideoError) come from the first
  ``next()``. A damaged file yields the clips that decode before the damage (and logs a
  warning when fewer frames decode than the header claims). The capture is always released,
  also when the caller stops early.
  """
  path = os.fspath(path)
  _check_clip_args(frames, stride, resolution, crop, short, max_clips)
  if crop == 'random' and rng is None:
    rng = np.random.default_rng()
  return _clips(path, frames, stride, resolution, crop, rng, max_clips, short)


def _check_decoded(path: str, bgr: np.ndarray | None) -> np.ndarray:
  if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
    what = None if bgr is None else f'{bgr.shape} {bgr.dtype}'
    raise VideoError(path, f'decoded a frame of unexpected shape/type {what}')
  return bgr


def _clips(path: str, frames: int, stride: int, resolution: int, crop: str,
           rng: np.random.Generator | None, max_clips: int | None,
           short: str) -> Iterator[np.ndarray]:
  if max_clips == 0:
    return
  needed = (frames - 1) * stride + 1
  window = frames * stride
  cap = _open(path)
  try:
    header_frames = _header(cap)[0]
    n_read = 0  # source frames consumed so far
    n_clips = 0
    while True:
      kept: list[np.ndarray] = []
      offset = None
      for j in range(window):
        if j % stride == 0 and len(kept) < frames:
          ok = cap.grab()
          if ok:
            ok, bgr = cap.retrieve()
          if not ok:
            break
          # Resize and crop in BGR, then flip the (smaller) crop to RGB.
          img = resize_short_side(_check_decoded(path, bgr), resolution)
          if offset is None:
            offset = crop_offset(img.shape[0], img.shape[1], resolution, crop, rng)
          kept.append(np.ascontiguousarray(crop_square(img, resolution, offset=offset)[..., ::-1]))
        else:
          # Frames between kept ones (and after the last kept one of the window) are skipped.
          if not cap.grab():
            break
        n_read += 1
      if len(kept) == frames:
        yield np.stack(kept)
        n_clips += 1
        if max_clips is not None and n_clips >= max_clips:
          return
        if n_read % window:  # the stream ended inside the window's tail: no further clip
          break
        continue
      # The stream ended before this clip was complete.
      if n_clips == 0:
        if n_read == 0:
          raise VideoError(path, 'contains no frames')
        if short == 'skip':
          raise VideoError(path, f'has {n_read} frames, needs {needed} for {frames} frames at '
                           f'stride {stride}')
        kept.extend([kept[-1]] * (frames - len(kept)))
        yield np.stack(kept)
      break
    if header_frames > 0 and n_read + 1 < header_frames and (
        max_clips is None or n_clips < max_clips):
      log.warning('video %r: decoded %d frames but the header claims %d (truncated or damaged?)',
                  path, n_read, header_frames)
  except cv2.error as e:
    raise VideoError(path, f'cannot be decoded ({str(e).strip()})') from e
  finally:
    cap.release()


def read_clip(path: str, **kwargs: Any) -> np.ndarray:
  """The first clip of :func:`read_clips` (same keyword arguments, ``max_clips`` aside)."""
  kwargs['max_clips'] = 1
  path = os.fspath(path)
  for clip in read_clips(path, **kwargs):
    return clip
  raise VideoError(path, 'yielded no clip')  # unreachable: read_clips raises or yields one


def list_files(root: str, extensions: Sequence[str], kind: str = 'file') -> list[str]:
  """Sorted paths under ``root`` (recursive) whose extension is in ``extensions``.

  Hidden files and directories (names starting with '.', e.g. macOS '._x.mp4' forks and the
  writers' temporary files) are skipped.
  """
  root = os.fspath(root)
  if not os.path.isdir(root):
    if os.path.isfile(root) and root.lower().endswith(tuple(e.lower() for e in extensions)):
      return [root]
    raise FileNotFoundError(f'{kind} root {root!r} does not exist or is not a directory')
  exts = tuple(e.lower() for e in extensions)
  out = []
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    dirnames[:] = [d for d in dirnames if not d.startswith('.')]
    out.extend(os.path.join(dirpath, f) for f in filenames
               if not f.startswith('.') and f.lower().endswith(exts))
  return sorted(out)


def list_videos(root: str, extensions: Sequence[str] = VIDEO_EXTENSIONS) -> list[str]:
  """Sorted video files under ``root`` (recursive, case-insensitive extensions, hidden skipped).

  A root that is itself a video file is returned as a one-element list.
  """
  return list_files(root, extensions, 'video')


# ---------------------------------------------------------------------------------------------
# Writing.


def _tmp_sibling(path: str, suffix: str) -> str:
  """A hidden, unique temporary name next to ``path`` (same filesystem, so os.replace is atomic)."""
  d, base = os.path.split(os.path.abspath(path))
  return os.path.join(d, f'.{base}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{suffix}')


def _check_frames(path: str, frames: Any) -> np.ndarray:
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
    raise ValueError(f'video {path!r}: frames must be [T>=1, H, W, 3], got shape {frames.shape}')
  if frames.dtype != np.uint8:
    raise ValueError(f'video {path!r}: frames must be uint8, got {frames.dtype}')
  return frames


def write_video(path: str, frames: np.ndarray, fps: float) -> str:
  """Writes uint8 RGB ``[T, H, W, 3]`` frames as an MPEG-4 (mp4v) ``.mp4``, atomically.

  Frames go to a hidden temporary file in the same directory, which is renamed over ``path``
  only once complete. H and W must be even (the codec would silently drop a row or column).
  Raises VideoError if no writer can be opened (e.g. the directory does not exist).
  """
  path = os.fspath(path)
  frames = _check_frames(path, frames)
  t, h, w, _ = frames.shape
  if h % 2 or w % 2:
    raise ValueError(f'video {path!r}: mp4v needs even height and width, got {h}x{w}')
  if not fps > 0:
    raise ValueError(f'video {path!r}: fps must be > 0, got {fps}')
  if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
    raise VideoError(path, 'cannot be written: its directory does not exist')
  tmp = _tmp_sibling(path, '.mp4')
  writer = cv2.VideoWriter(tmp, cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*'mp4v'), float(fps),
                           (w, h))
  try:
    if not writer.isOpened():
      raise VideoError(path, 'cannot be written: OpenCV could not open an mp4v writer')
    for frame in frames:
      writer.write(np.ascontiguousarray(frame[..., ::-1]))
    writer.release()
    if not os.path.exists(tmp) or os.path.getsize(tmp) == 0:
      raise VideoError(path, 'cannot be written: the writer produced no data')
    os.replace(tmp, path)
  finally:
    writer.release()
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def write_gif(path: str, frames: np.ndarray, fps: float, loop: int = 0) -> str:
  """Writes uint8 RGB ``[T, H, W, 3]`` frames as an animated GIF (Pillow), atomically.

  ``loop=0`` loops forever. GIF stores frame times in 10 ms units, so fps is approximate.
  """
  from PIL import Image  # pillow comes with matplotlib

  path = os.fspath(path)
  frames = _check_frames(path, frames)
  if not fps > 0:
    raise ValueError(f'gif {path!r}: fps must be > 0, got {fps}')
  images = [Image.fromarray(f) for f in frames]
  tmp = _tmp_sibling(path, '.gif')
  try:
    images[0].save(tmp, format='GIF', save_all=True, append_images=images[1:],
                   duration=max(10, int(round(1000 / fps))), loop=loop, disposal=1)
    os.replace(tmp, path)
  except OSError as e:
    raise OSError(f'gif {path!r}: cannot be written ({e})') from e
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path
