"""Shot boundaries for PHALP ("Extension to shot changes", seed 000 section 2.3).

PHALP drops the location terms of the cost (Eq. 2.7-2.8) for a tracklet whose location history
belongs to an earlier shot (see :mod:`phalp_jax.cost`); it needs a per-frame shot index. That
index comes from the input (``Detections.shot``) or, when the frames are available, from
:func:`detect_shots`: a frame-histogram shot detector in OpenCV.

Detector: each frame (downscaled so its longer side is at most ``max_side`` pixels, which
removes pixel noise and makes the cost independent of the resolution) is converted to HSV and
summarised by a normalised 3D colour histogram of ``bins = (16, 8, 8)`` hue x saturation x value
bins. Consecutive histograms are compared with ``cv2.compareHist``:

* ``method='bhattacharyya'`` (default): the Bhattacharyya distance, 0 for equal histograms and 1
  for histograms without common support;
* ``method='correlation'``: ``1 - correlation``, in [0, 2].

A new shot starts at frame ``t`` when the distance between frames ``t - 1`` and ``t`` exceeds
``threshold`` (default :data:`DEFAULT_THRESHOLD` = 0.5 for Bhattacharyya and
:data:`DEFAULT_CORRELATION_THRESHOLD` = 0.5 for correlation). Why 0.5 (Bhattacharyya), measured on
the project's synthetic pixel videos (``tokenizers_jax.synthetic_video``: textured backgrounds,
half of them panning, moving sprites), 30 pairs cut together: the largest distance between
consecutive frames of one shot was 0.09 (0.17 after an mp4v round trip), the smallest across a cut
0.74, so 0.5 sits in the gap. Correlation on the same videos: at most 0.01 within a shot, at
least 0.97 across a cut. A cut between two scenes with the same colour
statistics cannot be seen by any colour histogram (two random-colour panoramas: 0.26).
Gradual transitions (fades, dissolves) spread the change over many frames and are not
detected; ``min_shot_length`` suppresses a second cut fewer than that many frames after the last
one (a flash gives two cuts in a row).

Frames are RGB ``uint8 [H, W, 3]`` when given as arrays (as ``tokenizers_jax.video.write_video``
takes them); a video file is read sequentially with ``cv2.VideoCapture`` (BGR, converted
accordingly), one frame in memory at a time, so long videos stream.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence

import cv2
import numpy as np

from phalp_jax import io as io_lib

DEFAULT_THRESHOLD = 0.5              # Bhattacharyya distance
DEFAULT_CORRELATION_THRESHOLD = 0.5  # 1 - correlation
DEFAULT_BINS = (16, 8, 8)            # hue, saturation, value
DEFAULT_MAX_SIDE = 256
METHODS = ('bhattacharyya', 'correlation')


def _video_error(path: str, reason: str) -> Exception:
  from tokenizers_jax.video import VideoError  # the project's error for unusable video files
  return VideoError(path, reason)


def read_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
  """Yields the BGR ``uint8`` frames of a video file one at a time (``cv2.VideoCapture``)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise _video_error(path, 'does not exist or is not a regular file')
  cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
  try:
    if not cap.isOpened():
      raise _video_error(path, 'cannot be opened (corrupt or unsupported container)')
    while True:
      ok, frame = cap.read()
      if not ok:
        return
      yield frame
  finally:
    cap.release()


def frame_histogram(frame: np.ndarray, *, bgr: bool = False, bins: Sequence[int] = DEFAULT_BINS,
                    max_side: int = DEFAULT_MAX_SIDE) -> np.ndarray:
  """The normalised (sum 1) HSV histogram ``float32 [bins]`` of one ``uint8 [H, W, 3]`` frame."""
  frame = np.asarray(frame)
  if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
    raise ValueError(f'detect_shots: frames must be uint8 [H, W, 3], got {frame.dtype} '
                     f'{frame.shape}')
  h, w = frame.shape[:2]
  scale = max_side / max(h, w)
  if scale < 1:
    frame = cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA)
  hsv = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_BGR2HSV if bgr else cv2.COLOR_RGB2HSV)
  hist = cv2.calcHist([hsv], [0, 1, 2], None, [int(b) for b in bins], [0, 180, 0, 256, 0, 256])
  return (hist / max(float(hist.sum()), 1.0)).astype(np.float32)


def histogram_distance(a: np.ndarray, b: np.ndarray, method: str = 'bhattacharyya') -> float:
  """Distance of two histograms: Bhattacharyya in [0, 1] or ``1 - correlation`` in [0, 2]."""
  if method == 'bhattacharyya':
    return float(cv2.compareHist(a, b, cv2.HISTCMP_BHATTACHARYYA))
  if method == 'correlation':
    return 1.0 - float(cv2.compareHist(a, b, cv2.HISTCMP_CORREL))
  raise ValueError(f'detect_shots: method must be one of {METHODS}, got {method!r}')


def histogram_distances(source: str | os.PathLike | Iterable[np.ndarray], *,
                        method: str = 'bhattacharyya', bins: Sequence[int] = DEFAULT_BINS,
                        max_side: int = DEFAULT_MAX_SIDE) -> np.ndarray:
  """``float64 [T]``: entry ``t`` is the distance between frames ``t - 1`` and ``t`` (0 at t = 0).

  ``source``: a video path (read streaming) or an iterable of RGB ``uint8 [H, W, 3]`` frames
  (an array ``[T, H, W, 3]`` works too). Only the previous frame's histogram is kept in memory.
  """
  if method not in METHODS:
    raise ValueError(f'detect_shots: method must be one of {METHODS}, got {method!r}')
  is_path = isinstance(source, (str, os.PathLike))
  frames = read_frames(source) if is_path else source
  out, prev = [], None
  for frame in frames:
    hist = frame_histogram(frame, bgr=is_path, bins=bins, max_side=max_side)
    out.append(0.0 if prev is None else histogram_distance(prev, hist, method))
    prev = hist
  if is_path and not out:
    raise _video_error(os.fspath(source), 'holds no decodable frame')
  return np.asarray(out, np.float64)


def shot_boundaries_to_index(boundaries: Iterable[int], num_frames: int) -> np.ndarray:
  """Per-frame shot index ``int32 [T]`` (0, 1, ...) from the frames that start a new shot.

  ``boundaries`` are frame numbers in ``[0, num_frames)``, in any order; duplicates and frame 0
  (which always starts shot 0) add no shot. This is the index form ``Detections.shot`` accepts.
  """
  if int(num_frames) != num_frames or num_frames < 0:
    raise ValueError(f'shot_boundaries_to_index: num_frames must be a non-negative integer, '
                     f'got {num_frames!r}')
  b = np.asarray(list(boundaries), np.int64).reshape(-1)
  if b.size and (b.min() < 0 or b.max() >= num_frames):
    raise ValueError(f'shot_boundaries_to_index: boundaries must lie in [0, {num_frames}), '
                     f'got {b.min()}..{b.max()}')
  starts = np.zeros(int(num_frames), bool)
  starts[b] = True
  if num_frames:
    starts[0] = False
  return np.cumsum(starts).astype(np.int32)


def shot_index_to_boundaries(shots: np.ndarray) -> np.ndarray:
  """The frames that start a new shot (``int64 [S - 1]``), the inverse of
  :func:`shot_boundaries_to_index`."""
  shots = np.asarray(shots).reshape(-1)
  return (np.flatnonzero(np.diff(shots) != 0) + 1).astype(np.int64)


class ShotDetector:
  """Streaming shot detector: ``update(frame)`` per frame returns whether it starts a new shot.

  Holds only the previous frame's histogram, so it runs next to a live :class:`Tracker`
  (``tracker.step(dets, new_shot=detector.update(frame))``). ``bgr=True`` for frames straight
  from ``cv2.VideoCapture``; arguments as in :func:`detect_shots`.
  """

  def __init__(self, threshold: float | None = None, *, method: str = 'bhattacharyya',
               bins: Sequence[int] = DEFAULT_BINS, min_shot_length: int = 1,
               max_side: int = DEFAULT_MAX_SIDE, bgr: bool = False):
    if method not in METHODS:
      raise ValueError(f'detect_shots: method must be one of {METHODS}, got {method!r}')
    if threshold is None:
      threshold = DEFAULT_THRESHOLD if method == 'bhattacharyya' else DEFAULT_CORRELATION_THRESHOLD
    if not np.isfinite(threshold) or threshold < 0:
      raise ValueError(f'detect_shots: threshold must be a finite number >= 0, got {threshold!r}')
    if int(min_shot_length) != min_shot_length or min_shot_length < 1:
      raise ValueError(f'detect_shots: min_shot_length must be a positive integer, '
                       f'got {min_shot_length!r}')
    self.threshold, self.method, self.bins = float(threshold), method, tuple(bins)
    self.min_shot_length, self.max_side, self.bgr = int(min_shot_length), max_side, bgr
    self.reset()

  def reset(self) -> None:
    """Forgets the previous frame: the next one is frame 0 of shot 0."""
    self.frame = 0          # frames seen
    self.shot = 0           # shot index of the last frame
    self.distance = 0.0     # histogram distance of the last frame to the one before
    self._prev: np.ndarray | None = None
    self._start = 0         # first frame of the current shot

  def update(self, frame: np.ndarray) -> bool:
    """Takes the next frame; True when it starts a new shot (never for the first frame)."""
    hist = frame_histogram(frame, bgr=self.bgr, bins=self.bins, max_side=self.max_side)
    t = self.frame
    self.distance = 0.0 if self._prev is None else histogram_distance(self._prev, hist,
                                                                      self.method)
    cut = (self._prev is not None and self.distance > self.threshold
           and t - self._start >= self.min_shot_length)
    if cut:
      self.shot += 1
      self._start = t
    self._prev = hist
    self.frame = t + 1
    return cut


def detect_shots(source: str | os.PathLike | Iterable[np.ndarray],
                 threshold: float | None = None, *, method: str = 'bhattacharyya',
                 bins: Sequence[int] = DEFAULT_BINS, min_shot_length: int = 1,
                 max_side: int = DEFAULT_MAX_SIDE) -> np.ndarray:
  """Per-frame shot index ``int32 [T]`` of a video path (read streaming) or an iterable of RGB
  ``uint8 [H, W, 3]`` frames.

  A shot starts where the histogram distance to the previous frame exceeds ``threshold``
  (default per ``method``, see the module docstring) and at least ``min_shot_length`` frames
  after the previous start. The result goes into ``Detections.shot`` (:func:`with_shots`).
  """
  is_path = isinstance(source, (str, os.PathLike))
  detector = ShotDetector(threshold, method=method, bins=bins, min_shot_length=min_shot_length,
                          max_side=max_side, bgr=is_path)
  out = []
  for frame in (read_frames(source) if is_path else source):
    detector.update(frame)
    out.append(detector.shot)
  if is_path and not out:
    raise _video_error(os.fspath(source), 'holds no decodable frame')
  return np.asarray(out, np.int32)


def with_shots(dets: io_lib.Detections,
               source: str | os.PathLike | Iterable[np.ndarray] | np.ndarray,
               **kwargs) -> io_lib.Detections:
  """``dets`` with ``shot`` from the video's frames (:func:`detect_shots` with ``kwargs``) or
  from a given 1-D per-frame shot index or flag array."""
  if isinstance(source, np.ndarray) and source.ndim == 1:
    shot = source
  else:
    shot = detect_shots(source, **kwargs)
  if len(shot) != dets.num_frames:
    raise ValueError(f'{dets.source}: field shot would get {len(shot)} frames from the video but '
                     f'the detections have num_frames={dets.num_frames}')
  return dataclasses.replace(dets, shot=np.asarray(shot))
