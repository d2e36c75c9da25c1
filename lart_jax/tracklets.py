"""LART tracklets: one person's track through one video, read from the released per-track pickles
or converted from this project's PHALP tracker output (DESIGN section 7; seed 000 chapter 3).

Released layout (``brjathu/LART`` ``DATASET.md``; one pickle per track, ``T`` frames, the frames
of the track span, consecutive, with gaps marked by ``has_detection``):

=======================  =================  ====================================================
key                      shape              meaning
=======================  =================  ====================================================
``fid``                  [T, 1, 1]          frame number in the video (strictly increasing)
``pose_shape``           [T, 1, 229]        207 body pose + 9 orientation + 10 shape + 3 location
``has_detection``        [T, 1, 1]          1 where the person was detected in that frame
``action_label_gt``      [T, 1, 80]         AVA ground truth (multi-hot over the 80 ids)
``has_gt``               [T, 1, 1]          2 ground truth, 1 pseudo label, 0 none
``action_label_psudo``   dict idx->[1, 80]  pseudo labels, indexed by ``apperance_index``
``apperance_index``      [T, 1, 1]          index into ``apperance_dict`` (-1: none)
``apperance_dict``       dict idx->[1, Da]  appearance features (MViT / Hiera)
``frame_name``           list of T str      frame file names
``frame_size``           [T, 1, 2]          (h, w) of the frame in pixels
``frame_bbox``           [T, 1, 4]          x, y, w, h of the person in pixels
``frame_conf``           [T, 1, 1]          detector confidence
``3d_joints``, ``camera``, ``camera_bbox``  kept as they are (:attr:`Tracklet.extras`)
=======================  =================  ====================================================

(The misspellings ``apperance`` and ``psudo`` are the released key names.) Also accepted: a dense
``apperance_emb`` [T, 1, Da] instead of the index + dict pair, a dense ``action_label_psudo``
[T, 1, 80], and optional ``video_id`` / ``track_id`` keys (:func:`save_tracklet` writes them).

Validation happens on load, never in the middle of an epoch:

* a missing required key (:data:`REQUIRED_KEYS`), a wrong shape, fields of different lengths or
  frame ids that do not increase: ``ValueError`` naming the file and the key;
* ``pose_shape`` not 229-d, or appearance features whose size is not the configured
  ``appearance_dim`` (or missing when ``appearance_dim > 0``): ``ValueError`` naming the file, the
  field, the expected and the found size;
* missing label keys (``action_label_gt`` / ``has_gt``): the track is unlabeled (level 0
  everywhere) and counted in one warning per :func:`load_dir` call, or a ``ValueError`` naming the
  file and the key when ``require_labels=True``;
* NaN / Inf in a detected frame's pose or appearance: that detection is dropped
  (``detected`` False) and counted in a warning;
* a track with no detection at all: :func:`load_dir` skips it and counts it in a warning.

Labels: ``labels80[t]`` is the ground truth where ``has_gt == 2``, the pseudo label where
``has_gt == 1`` (as the released data loader does), zeros elsewhere; ``label_level`` keeps the
level. Pseudo labels come from ``action_label_psudo`` when the file has it (a frame whose
``apperance_index`` has no entry there drops to level 0), else from ``action_label_gt`` at the
``has_gt == 1`` frames (the layout of :mod:`lart_jax.synthetic`).
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import logging
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

POSE_DIM = 229
NUM_AVA_LABELS = 80
LEVEL_NONE, LEVEL_PSEUDO, LEVEL_GT = 0, 1, 2

REQUIRED_KEYS = ('fid', 'pose_shape', 'has_detection', 'frame_bbox', 'frame_size')
LABEL_KEYS = ('action_label_gt', 'has_gt')
APPEARANCE_INDEX, APPEARANCE_DICT, APPEARANCE_DENSE = 'apperance_index', 'apperance_dict', \
    'apperance_emb'
PSEUDO_LABELS = 'action_label_psudo'
EXTRA_KEYS = ('3d_joints', 'camera', 'camera_bbox')
# Released file names: <DATASET>_<VIDEO_ID>_<KEY_FRAME>_<TRACK_ID>_<TRACK_LENGTH>.pkl
_RELEASED_NAME = re.compile(r'^(?P<video>.+)_(?P<track>\d+)_(?P<length>\d+)$')


# ------------------------------------------------------------------------------------------------
# The tracklet
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Tracklet:
  """One track's frames (``T`` consecutive frames of its span; gaps have ``detected`` False).

  ``bbox`` is x1, y1, x2, y2 in pixels, ``frame_size`` is (h, w); ``appearance`` is None for a
  pose-only track. ``extras`` holds the other per-frame released arrays (``3d_joints``, ...)
  untouched so that :func:`save_tracklet` round-trips them.
  """

  video_id: str
  track_id: str
  frame_ids: np.ndarray  # int64 [T]
  pose: np.ndarray  # float32 [T, 229]
  appearance: np.ndarray | None  # float32 [T, Da]
  detected: np.ndarray  # bool [T]
  labels80: np.ndarray  # float32 [T, 80]
  label_level: np.ndarray  # int8 [T]
  bbox: np.ndarray  # float32 [T, 4]
  frame_size: np.ndarray  # float32 [T, 2]
  confidence: np.ndarray  # float32 [T]
  frame_names: list[str]
  source: str = '<memory>'
  extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return int(self.frame_ids.shape[0])

  @property
  def location(self) -> np.ndarray:
    """``[T, 3]``: the 3D location, the last 3 entries of the pose vector."""
    return self.pose[:, -3:]

  @property
  def appearance_dim(self) -> int:
    return 0 if self.appearance is None else int(self.appearance.shape[1])

  @property
  def num_detections(self) -> int:
    return int(self.detected.sum())


# ------------------------------------------------------------------------------------------------
# Conversion from the released dict
# ------------------------------------------------------------------------------------------------

def _per_frame(d: Mapping[str, Any], key: str, t: int | None, width: tuple[int, ...],
               source: str, dtype=np.float64) -> np.ndarray:
  """``d[key]`` as ``[T, *width]`` (the released middle axis of size 1 dropped)."""
  try:
    a = np.asarray(d[key], dtype)
  except (TypeError, ValueError) as e:
    raise ValueError(f'{source}: key {key} cannot be read as numbers ({e})') from None
  n = a.shape[0] if a.ndim else -1
  size = int(np.prod(width)) if width else 1
  if n < 0 or a.size != n * size:
    raise ValueError(f'{source}: key {key} has shape {a.shape}, expected '
                     f'[T, 1, {", ".join(map(str, width)) or 1}]')
  if t is not None and n != t:
    raise ValueError(f'{source}: key {key} has {n} frames but fid has {t}')
  return a.reshape((n,) + width)


def _indexed_rows(table: Any, index: np.ndarray, width: int | None, key: str,
                  source: str) -> tuple[np.ndarray, np.ndarray]:
  """Rows ``table[index[t]]`` (a dict of ``[1, D]`` arrays) -> ``([T, D], found [T])``."""
  if not isinstance(table, Mapping):
    raise ValueError(f'{source}: key {key} must be a dict indexed by {APPEARANCE_INDEX}, got '
                     f'{type(table).__name__}')
  rows = {int(k): np.asarray(v, np.float64).reshape(-1) for k, v in table.items()}
  sizes = {r.size for r in rows.values()}
  if len(sizes) > 1:
    raise ValueError(f'{source}: key {key} has entries of different sizes {sorted(sizes)}')
  dim = width if width is not None else (sizes.pop() if sizes else 0)
  if rows and next(iter(rows.values())).size != dim:
    raise ValueError(f'{source}: key {key} has {next(iter(rows.values())).size}-d entries, '
                     f'expected {dim}')
  out = np.zeros((len(index), dim), np.float64)
  found = np.zeros(len(index), bool)
  for t, i in enumerate(index):
    r = rows.get(int(i)) if i >= 0 else None
    if r is not None:
      out[t], found[t] = r, True
  return out, found


def tracklet_from_dict(d: Mapping[str, Any], source: str, video_id: str, track_id: str, *,
                       appearance_dim: int | None = None, require_labels: bool = False,
                       counts: collections.Counter | None = None) -> Tracklet:
  """One released per-track dict -> :class:`Tracklet`, validated (see the module docstring).

  ``appearance_dim``: None keeps whatever appearance the dict has; 0 drops it (pose-only); > 0
  requires features of exactly that size. ``counts`` (optional) accumulates
  ``'unlabeled'`` and ``'non_finite'`` for the caller's warnings.
  """
  counts = counts if counts is not None else collections.Counter()
  if not isinstance(d, Mapping):
    raise ValueError(f'{source}: expected a dict of per-track arrays, got {type(d).__name__}')
  for key in REQUIRED_KEYS:
    if key not in d:
      raise ValueError(f'{source}: missing required key {key} (has: {sorted(map(str, d))})')
  fid = _per_frame(d, 'fid', None, (), source)
  t = fid.shape[0]
  if t == 0:
    raise ValueError(f'{source}: key fid is empty (a track of 0 frames)')
  if not np.all(np.isfinite(fid)) or np.any(fid != np.round(fid)):
    raise ValueError(f'{source}: key fid must hold integer frame numbers')
  frame_ids = fid.astype(np.int64)
  if np.any(np.diff(frame_ids) <= 0):
    raise ValueError(f'{source}: key fid must be strictly increasing')
  pose_raw = np.asarray(d['pose_shape'])
  if pose_raw.ndim < 2 or pose_raw.shape[-1] != POSE_DIM:
    raise ValueError(f'{source}: field pose_shape has vectors of size '
                     f'{pose_raw.shape[-1] if pose_raw.ndim else "?"} (shape {pose_raw.shape}), '
                     f'expected {POSE_DIM}')
  pose = _per_frame(d, 'pose_shape', t, (POSE_DIM,), source)
  detected = _per_frame(d, 'has_detection', t, (), source) > 0
  box = _per_frame(d, 'frame_bbox', t, (4,), source)
  bbox = np.concatenate([box[:, :2], box[:, :2] + box[:, 2:]], axis=1)
  frame_size = _per_frame(d, 'frame_size', t, (2,), source)
  conf = (_per_frame(d, 'frame_conf', t, (), source) if 'frame_conf' in d
          else np.ones(t, np.float64))
  names = d.get('frame_name')
  if names is None:
    names = [f'{video_id}/{int(f):06d}.jpg' for f in frame_ids]
  names = [str(n) for n in names]
  if len(names) != t:
    raise ValueError(f'{source}: key frame_name has {len(names)} entries but fid has {t}')

  # appearance: index + dict (released) or dense
  index = (_per_frame(d, APPEARANCE_INDEX, t, (), source).astype(np.int64)
           if APPEARANCE_INDEX in d else np.full(t, -1, np.int64))
  appearance = None
  field = None
  if APPEARANCE_DENSE in d:
    field = APPEARANCE_DENSE
    a = np.asarray(d[APPEARANCE_DENSE])
    dim = a.shape[-1] if a.ndim >= 2 else 0
    appearance = _per_frame(d, APPEARANCE_DENSE, t, (dim,), source)
  elif APPEARANCE_DICT in d and len(d[APPEARANCE_DICT]):
    field = APPEARANCE_DICT
    appearance, _ = _indexed_rows(d[APPEARANCE_DICT], index, None, APPEARANCE_DICT, source)
  if appearance_dim is not None:
    if appearance_dim == 0:
      appearance = None
    elif appearance is None and not detected.any():
      appearance = np.zeros((t, appearance_dim))  # skipped by the loaders anyway
    elif appearance is None:
      raise ValueError(f'{source}: field {APPEARANCE_DICT} (or {APPEARANCE_DENSE}) is missing '
                       f'but data.appearance_dim is {appearance_dim}: expected {appearance_dim}-d '
                       'appearance features, found none (set data.appearance_dim = 0 for '
                       'pose only)')
    elif appearance.shape[1] != appearance_dim:
      raise ValueError(f'{source}: field {field} has {appearance.shape[1]}-d features, expected '
                       f'data.appearance_dim = {appearance_dim}')

  # labels
  missing = [k for k in LABEL_KEYS if k not in d]
  if missing:
    if require_labels:
      raise ValueError(f'{source}: missing label key {missing[0]} (data.require_labels is True)')
    counts['unlabeled'] += 1
    labels80 = np.zeros((t, NUM_AVA_LABELS))
    level = np.zeros(t, np.int8)
  else:
    gt = _per_frame(d, 'action_label_gt', t, (NUM_AVA_LABELS,), source)
    level = _per_frame(d, 'has_gt', t, (), source)
    if not np.all(np.isin(level, (0, 1, 2))):
      raise ValueError(f'{source}: key has_gt must be 0, 1 or 2, got {sorted(np.unique(level))}')
    level = level.astype(np.int8)
    pseudo, have_pseudo = gt, np.ones(t, bool)  # no pseudo key: action_label_gt holds them
    if PSEUDO_LABELS in d:
      p = d[PSEUDO_LABELS]
      if isinstance(p, Mapping):
        pseudo, have_pseudo = _indexed_rows(p, index, NUM_AVA_LABELS, PSEUDO_LABELS, source)
      else:
        pseudo, have_pseudo = _per_frame(d, PSEUDO_LABELS, t, (NUM_AVA_LABELS,), source), \
            np.ones(t, bool)
    # a pseudo level without a pseudo label is no label
    level = np.where((level == LEVEL_PSEUDO) & ~have_pseudo, LEVEL_NONE, level).astype(np.int8)
    labels80 = np.where((level == LEVEL_GT)[:, None], gt,
                        np.where((level == LEVEL_PSEUDO)[:, None], pseudo, 0.0))
    if not np.all(np.isfinite(labels80)):
      raise ValueError(f'{source}: key action_label_gt / {PSEUDO_LABELS} holds NaN or Inf')

  # NaN / Inf features: drop those detections; zero the values so nothing leaks downstream
  bad = ~np.all(np.isfinite(pose), axis=1)
  if appearance is not None:
    bad |= ~np.all(np.isfinite(appearance), axis=1)
  bad |= ~np.all(np.isfinite(bbox), axis=1)
  if bad.any():
    counts['non_finite'] += int((bad & detected).sum())
    detected = detected & ~bad
    pose = np.where(bad[:, None], 0.0, pose)
    if appearance is not None:
      appearance = np.where(bad[:, None], 0.0, appearance)
    bbox = np.where(bad[:, None], 0.0, bbox)
  extras = {}
  for key in EXTRA_KEYS:
    if key in d:
      a = np.asarray(d[key])
      if a.ndim >= 1 and a.shape[0] == t:
        extras[key] = a
  return Tracklet(
      video_id=str(video_id), track_id=str(track_id), frame_ids=frame_ids,
      pose=pose.astype(np.float32), detected=detected,
      appearance=None if appearance is None else appearance.astype(np.float32),
      labels80=labels80.astype(np.float32), label_level=level.astype(np.int8),
      bbox=bbox.astype(np.float32), frame_size=frame_size.astype(np.float32),
      confidence=conf.astype(np.float32), frame_names=names, source=str(source), extras=extras)


def tracklet_to_dict(tr: Tracklet) -> dict[str, Any]:
  """:class:`Tracklet` -> the released per-track dict (plus ``video_id`` / ``track_id``)."""
  t = len(tr)
  xywh = np.concatenate([tr.bbox[:, :2], tr.bbox[:, 2:] - tr.bbox[:, :2]], axis=1)
  pseudo = tr.label_level == LEVEL_PSEUDO
  keyed = pseudo | (tr.detected if tr.appearance is not None else np.zeros(t, bool))
  index = np.where(keyed, np.arange(t), -1)
  gt = np.where((tr.label_level == LEVEL_GT)[:, None], tr.labels80, 0.0)
  d = {
      'video_id': tr.video_id, 'track_id': tr.track_id,
      'fid': tr.frame_ids.reshape(t, 1, 1).astype(np.int64),
      'pose_shape': tr.pose.reshape(t, 1, POSE_DIM).astype(np.float32),
      'has_detection': tr.detected.reshape(t, 1, 1).astype(np.float32),
      'action_label_gt': gt.reshape(t, 1, NUM_AVA_LABELS).astype(np.float32),
      'has_gt': tr.label_level.reshape(t, 1, 1).astype(np.int64),
      PSEUDO_LABELS: {int(i): tr.labels80[i][None].astype(np.float32)
                      for i in np.nonzero(pseudo)[0]},
      APPEARANCE_INDEX: index.reshape(t, 1, 1).astype(np.int64),
      APPEARANCE_DICT: ({} if tr.appearance is None else
                        {int(i): tr.appearance[i][None] for i in np.nonzero(keyed)[0]}),
      'frame_name': list(tr.frame_names),
      'frame_size': tr.frame_size.reshape(t, 1, 2).astype(np.float32),
      'frame_bbox': xywh.reshape(t, 1, 4).astype(np.float32),
      'frame_conf': tr.confidence.reshape(t, 1, 1).astype(np.float32),
  }
  d.update(tr.extras)
  return d


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------

def _ids_from_path(path: str, d: Mapping[str, Any]) -> tuple[str, str]:
  """(video id, track id): the dict's keys, else a released file name, else dir / file stem."""
  stem = os.path.splitext(os.path.basename(path))[0]
  video, track = d.get('video_id'), d.get('track_id')
  m = _RELEASED_NAME.match(stem)
  if m is not None and (video is None or track is None):
    try:
      released = int(m.group('length')) == len(np.asarray(d['fid']))
    except (KeyError, TypeError):
      released = False
    if released:
      video = m.group('video') if video is None else video
      track = m.group('track') if track is None else track
  if video is None:
    video = os.path.basename(os.path.dirname(os.path.abspath(path)))
  if track is None:
    track = stem
  return str(video), str(track)


def _read(path: str) -> Any:
  from phalp_jax import io as phalp_io  # joblib when installed, else pickle; errors name the file
  try:
    return phalp_io._read_pickle(path)  # pylint: disable=protected-access
  except (EOFError, OSError, pickle.UnpicklingError, ValueError) as e:
    raise ValueError(f'{path}: cannot be read as a tracklet pickle ({type(e).__name__}: {e})'
                     ) from None


def load_tracklet(path: str | os.PathLike, *, appearance_dim: int | None = None,
                  require_labels: bool = False,
                  counts: collections.Counter | None = None) -> Tracklet:
  """Reads one tracklet pickle (released layout; ids as :func:`load_dir` documents)."""
  path = str(path)
  d = _read(path)
  if not isinstance(d, Mapping):
    raise ValueError(f'{path}: expected a dict of per-track arrays, got {type(d).__name__}')
  video, track = _ids_from_path(path, d)
  return tracklet_from_dict(d, path, video, track, appearance_dim=appearance_dim,
                            require_labels=require_labels, counts=counts)


def save_tracklet(path: str | os.PathLike, tracklet: Tracklet) -> None:
  """Writes ``tracklet`` in the released layout (pickle protocol 4, joblib-readable). Atomic."""
  from phalp_jax import io as phalp_io
  d = tracklet_to_dict(tracklet)
  phalp_io.atomic_write(str(path), lambda f: pickle.dump(d, f, protocol=4))


def load_dir(path: str | os.PathLike, *, appearance_dim: int | None = None,
             require_labels: bool = False, field: str = 'data.input',
             progress: bool = True) -> list[list[Tracklet]]:
  """Every ``path/**/*.pkl`` -> videos (sorted by id), each a list of its tracklets (sorted).

  Video id: the pickle's ``video_id`` key; else, for a released name
  ``<video>_<track>_<length>.pkl`` whose length matches, ``<video>``; else the parent folder's
  name. Track id likewise (``track_id``, the released name, the file stem). Tracks with no
  detection are skipped; unlabeled tracks and dropped non-finite detections are counted; each
  count is one warning. Errors name the file (see the module docstring).
  """
  from tqdm import tqdm
  path = str(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{field}: directory {path!r} does not exist')
  files = sorted(p for p in glob.glob(os.path.join(path, '**', '*.pkl'), recursive=True)
                 if os.path.isfile(p))
  if not files:
    raise ValueError(f'{field}: {path!r} holds no .pkl tracklet files')
  counts: collections.Counter = collections.Counter()
  videos: dict[str, dict[str, Tracklet]] = {}
  for f in tqdm(files, desc='tracklets', unit='file', disable=not progress or len(files) < 50,
                dynamic_ncols=True):
    tr = load_tracklet(f, appearance_dim=appearance_dim, require_labels=require_labels,
                       counts=counts)
    if tr.num_detections == 0:
      counts['empty'] += 1
      continue
    tracks = videos.setdefault(tr.video_id, {})
    if tr.track_id in tracks:
      raise ValueError(f'{f}: video {tr.video_id!r} track {tr.track_id!r} is also in '
                       f'{tracks[tr.track_id].source}')
    tracks[tr.track_id] = tr
  _warn_counts(counts, f'{field} ({path})', len(files))
  if not videos:
    raise ValueError(f'{field}: none of the {len(files)} tracklets in {path!r} has a detection')
  return [[v[k] for k in sorted(v, key=_natural)] for _, v in sorted(videos.items())]


def _natural(s: str) -> tuple:
  return (0, int(s), '') if s.isdigit() else (1, 0, s)


def _warn_counts(counts: Mapping[str, int], where: str, total: int) -> None:
  if counts.get('empty'):
    log.warning('%s: skipped %d of %d tracklets with no detection', where, counts['empty'], total)
  if counts.get('unlabeled'):
    log.warning('%s: %d of %d tracklets have no label keys (%s); treated as unlabeled',
                where, counts['unlabeled'], total, ', '.join(LABEL_KEYS))
  if counts.get('non_finite'):
    log.warning('%s: dropped %d detections with NaN or Inf features', where, counts['non_finite'])


def from_dicts(videos: Sequence[Sequence[Mapping[str, Any]]], *, appearance_dim: int | None = None,
               require_labels: bool = False, where: str = '<synthetic>') -> list[list[Tracklet]]:
  """In-memory per-track dicts grouped by video (e.g. ``lart_jax.synthetic.make_videos``) ->
  videos of tracklets, validated and filtered like :func:`load_dir`."""
  counts: collections.Counter = collections.Counter()
  out, total = [], 0
  for v, tracks in enumerate(videos):
    kept = []
    for k, d in enumerate(tracks):
      total += 1
      video = str(d.get('video_id', f'video{v:05d}')) if isinstance(d, Mapping) else str(v)
      track = str(d.get('track_id', k)) if isinstance(d, Mapping) else str(k)
      tr = tracklet_from_dict(d, f'{where} video {v} track {k}', video, track,
                              appearance_dim=appearance_dim, require_labels=require_labels,
                              counts=counts)
      if tr.num_detections == 0:
        counts['empty'] += 1
        continue
      kept.append(tr)
    if kept:
      out.append(kept)
  _warn_counts(counts, where, total)
  if not out:
    raise ValueError(f'{where}: no tracklet has a detection')
  return out


# ------------------------------------------------------------------------------------------------
# From the PHALP tracker
# ------------------------------------------------------------------------------------------------

def tracklets_from_tracker(rows: np.ndarray, detections: Any, *, video_id: str,
                           appearance_dim: int | None = None) -> list[Tracklet]:
  """Track rows ``[K, 7]`` (frame, id, x, y, w, h, conf; :func:`phalp_jax.tracker.track_video`)
  and the :class:`phalp_jax.io.Detections` they were tracked from -> one unlabeled
  :class:`Tracklet` per track id (sorted by id), spanning its first to last frame.

  Each row is matched to its detection by (frame, box, conf) for the ``pose`` feature (must be
  229-d: the LART pose vector) and the ``appe`` feature (None when 0-d). Frame names follow
  :func:`phalp_jax.io.frame_name`.
  """
  from phalp_jax import io as phalp_io
  src = detections.source
  rows = np.asarray(rows, np.float64).reshape(-1, 7)
  if detections.pose.shape[1] != POSE_DIM:
    raise ValueError(f'{src}: field pose has {detections.pose.shape[1]}-d tracker pose features, '
                     f'expected {POSE_DIM} (the LART pose vector; track with 229-d pose_shape '
                     'features)')
  da = int(detections.appe.shape[1])
  if appearance_dim is not None and appearance_dim > 0 and da != appearance_dim:
    raise ValueError(f'{src}: field appe has {da}-d appearance features, expected '
                     f'data.appearance_dim = {appearance_dim}')
  use_appe = da > 0 and appearance_dim != 0
  key = lambda f, b, c: (int(f), *np.round(np.asarray(b, np.float64), 6).tolist(),
                         round(float(c), 6))
  where = {}
  for i, (f, b, c) in enumerate(zip(detections.frame, detections.bbox, detections.conf)):
    where.setdefault(key(f, b, c), i)
  h, w = detections.image_size
  out = []
  for tid in np.unique(rows[:, 1]).astype(np.int64):
    r = rows[rows[:, 1] == tid]
    r = r[np.argsort(r[:, 0], kind='stable')]
    frames = r[:, 0].astype(np.int64)
    first, last = int(frames[0]), int(frames[-1])
    t = last - first + 1
    pos = frames - first
    pose = np.zeros((t, POSE_DIM), np.float32)
    appe = np.zeros((t, da), np.float32) if use_appe else None
    bbox = np.zeros((t, 4), np.float32)
    conf = np.zeros(t, np.float32)
    detected = np.zeros(t, bool)
    for p, row in zip(pos, r):
      if detected[p]:
        continue  # a second row of one id in one frame: keep the first
      i = where.get(key(row[0], row[2:6], row[6]))
      if i is None:
        raise ValueError(f'{src}: track row frame {int(row[0])} id {tid} box {row[2:6].tolist()} '
                         'matches no detection; pass the detections the rows were tracked from')
      detected[p] = True
      pose[p] = detections.pose[i]
      if appe is not None:
        appe[p] = detections.appe[i]
      bbox[p] = [row[2], row[3], row[2] + row[4], row[3] + row[5]]
      conf[p] = row[6]
    ids = np.arange(first, last + 1, dtype=np.int64)
    out.append(Tracklet(
        video_id=str(video_id), track_id=str(int(tid)), frame_ids=ids, pose=pose,
        appearance=appe, detected=detected,
        labels80=np.zeros((t, NUM_AVA_LABELS), np.float32), label_level=np.zeros(t, np.int8),
        bbox=bbox, frame_size=np.tile(np.asarray([[h, w]], np.float32), (t, 1)),
        confidence=conf, frame_names=[phalp_io.frame_name(video_id, f) for f in ids],
        source=f'{src} track {int(tid)}'))
  return out


def tracklets_from_tracker_pickle(path: str | os.PathLike, *, video_id: str | None = None,
                                  appearance_dim: int | None = None) -> list[Tracklet]:
  """A tracker pickle (``launch.track --store_features`` output, or the released tracker's) ->
  :func:`tracklets_from_tracker`. The video id defaults to the file stem."""
  from phalp_jax import io as phalp_io
  path = str(path)
  out = phalp_io.load_phalp_pickle(path)
  if out.detections.pose.shape[1] == 0:
    raise ValueError(f'{path}: field pose is not stored (0-d); write the tracker pickle with '
                     f'--store_features so each row keeps its {POSE_DIM}-d pose vector')
  video = video_id or os.path.splitext(os.path.basename(path))[0]
  return tracklets_from_tracker(out.tracks, out.detections, video_id=video,
                                appearance_dim=appearance_dim)
