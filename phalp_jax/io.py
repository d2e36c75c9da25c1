"""PHALP inputs and outputs: per-video detections, MOTChallenge text files, the released pickle.

The canonical per-video detection file is an ``.npz`` with one row per detection:

=============  ===============  ==========================================================
key            shape            meaning
=============  ===============  ==========================================================
``frame``      int [N]          frame number, 0-based
``bbox``       float [N, 4]     x, y, w, h in pixels (top-left corner, width, height)
``conf``       float [N]        detector confidence
``appe``       float [N, Da]    appearance feature (Da from the data; may be 0)
``pose``       float [N, Dp]    pose feature (Dp from the data; may be 0)
``loca``       float [N, 3]     x, y of the person's root in pixels, nearness n = log(1/z)
``uv``         float [N,4,h,w]  optional: texture map, 3 colour channels + visibility
``gt_id``      int [N]          optional: ground-truth identity
``image_size`` int [2]          (h, w) of the video's frames
``shot``       int [T]          optional: shot index per frame (0, then +1 at each cut)
``num_frames`` int []           optional: T, the video's length (default: last frame + 1)
=============  ===============  ==========================================================

``shot`` is held as the index form; the flag form (1 on a frame that starts a new shot, what the
released tracker's pickle stores) is accepted anywhere and converted on construction
(:func:`shot_index`), and the pickle writer writes flags again.

Frames are 0-based everywhere in memory. MOTChallenge files are 1-based: :func:`load_mot`
subtracts 1 and :func:`save_mot` adds 1, so a MOT file round-trips unchanged.

Bad input (the loaders apply :func:`sanitize`): rows with NaN or Inf in ``bbox``, ``conf``,
``appe``, ``pose`` or ``loca`` and rows whose box has ``w <= 0`` or ``h <= 0`` are dropped, each
kind counted in one ``logging`` warning per file (logger ``phalp_jax.io``); exact repeats of a
detection in the same frame (same box and confidence: a frame delivered twice) are dropped the same
way; rows are sorted by frame
(stable) with a warning when they were out of order; several rows in one frame are normal; frames
without detections stay frames (``num_frames`` is fixed before rows are dropped) and a long run of
them is reported. Malformed files (a missing key, a wrong shape, non-integer frames, fields of
different lengths) raise ``ValueError`` naming the file and the field; :func:`check_compatible`
does the same for files whose feature sizes differ.

Location from a box (MOTChallenge files, pickles without a camera): x, y = the box centre,
n = log(h / H) with h the box height and H the image height. For a person of a given height the box
height is proportional to 1/z, so this is log(1/z) up to a constant, monotone in the box height and
0 for a person as tall as the frame. The centre (not the feet) is used so that every source agrees
with the released tracker, whose root is the pelvis.

Tracker output ("track rows") everywhere is a float64 array [K, 7] with columns
:data:`TRACK_COLUMNS` = frame, id, x, y, w, h, conf.
"""

from __future__ import annotations

import configparser
import dataclasses
import json
import logging
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

log = logging.getLogger(__name__)

TRACK_COLUMNS = ('frame', 'id', 'x', 'y', 'w', 'h', 'conf')
REQUIRED_FIELDS = ('frame', 'bbox', 'conf', 'appe', 'pose', 'loca', 'image_size')
OPTIONAL_FIELDS = ('uv', 'gt_id', 'shot', 'num_frames')
FEATURE_FIELDS = ('bbox', 'conf', 'appe', 'pose', 'loca')  # checked for NaN / Inf
# MOT17 ground-truth classes: 1 pedestrian is scored; 2 person on vehicle, 7 static person,
# 8 distractor and 12 reflection are the "distractors" the official evaluation ignores.
MOT_PEDESTRIAN_CLASSES = (1,)
MOT_DISTRACTOR_CLASSES = (2, 7, 8, 12)
LONG_GAP = 100  # a run of at least this many frames without detections is reported


@dataclasses.dataclass
class Detections:
  """All detections of one video, one row per detection (see the module docstring for the fields).

  Arrays are coerced on construction (frame/gt_id int64, bbox/conf/loca float64, appe/pose/uv
  float32) and checked by :meth:`validate`, so a malformed object cannot be built.
  """

  frame: np.ndarray
  bbox: np.ndarray
  conf: np.ndarray
  appe: np.ndarray
  pose: np.ndarray
  loca: np.ndarray
  image_size: tuple[int, int]
  uv: np.ndarray | None = None
  gt_id: np.ndarray | None = None
  shot: np.ndarray | None = None
  num_frames: int | None = None
  source: str = '<memory>'

  def __post_init__(self):
    self.source = str(self.source)
    for name in ('frame', 'bbox', 'conf', 'appe', 'pose', 'loca'):
      setattr(self, name, np.asarray(getattr(self, name)))
    for name in ('uv', 'gt_id', 'shot'):
      if getattr(self, name) is not None:
        setattr(self, name, np.asarray(getattr(self, name)))
    self.frame = _as_int(self.frame, self.source, 'frame')
    if self.gt_id is not None:
      self.gt_id = _as_int(self.gt_id, self.source, 'gt_id')
    if self.shot is not None:
      self.shot = _as_int(self.shot, self.source, 'shot').reshape(-1)
    size = np.asarray(self.image_size).reshape(-1)
    if size.shape != (2,):
      raise ValueError(f'{self.source}: field image_size must be (h, w), got {self.image_size!r}')
    self.image_size = (int(size[0]), int(size[1]))
    if self.num_frames is None:
      if self.shot is not None:
        self.num_frames = len(self.shot)
      else:
        self.num_frames = int(self.frame.max()) + 1 if self.frame.size else 0
    self.num_frames = int(self.num_frames)
    self.validate()
    if self.shot is not None:
      self.shot = shot_index(self.shot, self.num_frames).astype(np.int64)
    self.bbox = self.bbox.astype(np.float64, copy=False)
    self.conf = self.conf.astype(np.float64, copy=False)
    self.loca = self.loca.astype(np.float64, copy=False)
    self.appe = self.appe.astype(np.float32, copy=False)
    self.pose = self.pose.astype(np.float32, copy=False)
    if self.uv is not None:
      self.uv = self.uv.astype(np.float32, copy=False)

  def __len__(self) -> int:
    return int(self.frame.shape[0])

  def validate(self) -> None:
    """Raises ``ValueError`` naming the file and the field on a wrong shape, length or dtype."""
    src = self.source
    expect = {'frame': 1, 'bbox': 2, 'conf': 1, 'appe': 2, 'pose': 2, 'loca': 2,
              'uv': 4, 'gt_id': 1}
    for name, ndim in expect.items():
      value = getattr(self, name)
      if value is None:
        continue
      if value.ndim != ndim:
        raise ValueError(f'{src}: field {name} must have {ndim} dimension(s) (one row per '
                         f'detection), got shape {value.shape}')
      if name != 'frame' and value.dtype.kind not in 'biuf':
        raise ValueError(f'{src}: field {name} must be numeric, got dtype {value.dtype}')
    if self.frame.dtype.kind not in 'iu':
      raise ValueError(f'{src}: field frame must hold integers, got dtype {self.frame.dtype}')
    n = self.frame.shape[0]
    for name in ('bbox', 'conf', 'appe', 'pose', 'loca', 'uv', 'gt_id'):
      value = getattr(self, name)
      if value is not None and value.shape[0] != n:
        raise ValueError(f'{src}: field {name} has {value.shape[0]} rows but field frame has {n}')
    if self.bbox.shape[1] != 4:
      raise ValueError(f'{src}: field bbox must have shape [N, 4] (x, y, w, h), '
                       f'got {self.bbox.shape}')
    if self.loca.shape[1] != 3:
      raise ValueError(f'{src}: field loca must have shape [N, 3] (x, y, nearness), '
                       f'got {self.loca.shape}')
    if self.uv is not None and self.uv.shape[1] != 4:
      raise ValueError(f'{src}: field uv must have shape [N, 4, h, w] (colour + visibility), '
                       f'got {self.uv.shape}')
    if n and self.frame.min() < 0:
      raise ValueError(f'{src}: field frame holds a negative frame number ({self.frame.min()})')
    if self.num_frames < 0 or (n and self.frame.max() >= self.num_frames):
      raise ValueError(f'{src}: field num_frames is {self.num_frames} but field frame reaches '
                       f'{self.frame.max() if n else None}')
    if self.shot is not None and self.shot.shape != (self.num_frames,):
      raise ValueError(f'{src}: field shot must have one entry per frame ({self.num_frames}), '
                       f'got shape {self.shot.shape}')
    if min(self.image_size) <= 0:
      raise ValueError(f'{src}: field image_size must be positive (h, w), got {self.image_size}')

  def frames(self) -> Iterator[tuple[int, np.ndarray]]:
    """Yields ``(t, row indices)`` for every ``t`` in ``range(num_frames)``, empty frames too."""
    order = np.argsort(self.frame, kind='stable')
    sorted_frames = self.frame[order]
    bounds = np.searchsorted(sorted_frames, np.arange(self.num_frames + 1), side='left')
    for t in range(self.num_frames):
      yield t, order[bounds[t]:bounds[t + 1]]

  def select(self, index: np.ndarray) -> Detections:
    """The detections at ``index`` (rows or a boolean mask); per-frame fields are kept."""
    take = lambda a: None if a is None else a[index]
    return dataclasses.replace(
        self, frame=self.frame[index], bbox=self.bbox[index], conf=self.conf[index],
        appe=self.appe[index], pose=self.pose[index], loca=self.loca[index], uv=take(self.uv),
        gt_id=take(self.gt_id))

  def feature_sizes(self) -> dict[str, tuple[int, ...] | None]:
    """Per-detection shapes of the features, which must agree between files a tracker reads."""
    return {'appe': self.appe.shape[1:], 'pose': self.pose.shape[1:], 'loca': self.loca.shape[1:],
            'uv': None if self.uv is None else self.uv.shape[1:]}


def _as_int(value: np.ndarray, source: str, name: str) -> np.ndarray:
  """Integer arrays pass; floats holding whole numbers are cast; anything else is an error."""
  if value.dtype.kind in 'iu':
    return value.astype(np.int64, copy=False)
  if value.dtype.kind == 'b':
    return value.astype(np.int64)
  if value.dtype.kind == 'f' and np.all(np.isfinite(value)) and np.all(value == np.round(value)):
    return value.astype(np.int64)
  raise ValueError(f'{source}: field {name} must hold integers, got dtype {value.dtype}'
                   + (' with non-integer values' if value.dtype.kind == 'f' else ''))


def _keep_index(dets: Detections) -> np.ndarray:
  """The rows :func:`sanitize` keeps, in their new order (logs what it drops or reorders)."""
  n = len(dets)
  keep = np.ones(n, bool)
  bad_counts = {}
  for name in FEATURE_FIELDS:
    value = getattr(dets, name)
    bad = ~np.isfinite(value.reshape(n, -1)).all(axis=1) if n else np.zeros(0, bool)
    if bad.any():
      bad_counts[name] = int(bad.sum())
    keep &= ~bad
  if not keep.all():
    detail = ', '.join(f'{k}: {v}' for k, v in bad_counts.items())
    log.warning('%s: ignored %d of %d detections with NaN or Inf in a feature (%s)',
                dets.source, int((~keep).sum()), n, detail)
  bad_box = keep & ((dets.bbox[:, 2] <= 0) | (dets.bbox[:, 3] <= 0))
  if bad_box.any():
    log.warning('%s: ignored %d of %d detections with a zero or negative box width or height',
                dets.source, int(bad_box.sum()), n)
    keep &= ~bad_box
  if keep.any():
    # A frame delivered twice (a decoder or detector repeating itself) duplicates its rows: the
    # same frame, box and confidence again. Keep the first of each.
    rows = np.flatnonzero(keep)
    key = np.concatenate([dets.frame[rows, None].astype(np.float64), dets.bbox[rows],
                          dets.conf[rows, None]], axis=1)
    _, first = np.unique(key, axis=0, return_index=True)
    repeated = np.setdiff1d(rows, rows[first])
    if repeated.size:
      log.warning('%s: ignored %d of %d detections repeating another detection of the same frame '
                  '(same box and confidence; a repeated frame?)', dets.source, repeated.size, n)
      keep[repeated] = False
  index = np.flatnonzero(keep)
  frames = dets.frame[index]
  if np.any(np.diff(frames) < 0):
    log.warning('%s: detections were not in frame order; sorted them by frame', dets.source)
    index = index[np.argsort(frames, kind='stable')]
  return index


def _report_gaps(dets: Detections) -> None:
  """One warning for the longest run of frames without detections, when it is long."""
  has = np.zeros(dets.num_frames, bool)
  has[dets.frame] = True
  longest, start, run = 0, 0, 0
  for t, h in enumerate(has):
    run = 0 if h else run + 1
    if run > longest:
      longest, start = run, t - run + 1
  if longest >= LONG_GAP:
    log.warning('%s: %d frames without any detection (frames %d-%d of %d); tracks cannot bridge '
                'them', dets.source, longest, start, start + longest - 1, dets.num_frames)


def sanitize(dets: Detections) -> Detections:
  """Applies the bad-input policy: drops non-finite rows and empty boxes, sorts by frame, warns."""
  index = _keep_index(dets)
  out = dets if (len(index) == len(dets) and np.all(index == np.arange(len(dets)))) else (
      dets.select(index))
  _report_gaps(out)
  return out


def check_compatible(detections: Sequence[Detections]) -> None:
  """Raises ``ValueError`` naming the file and field whose feature size differs from file 0's."""
  if not detections:
    return
  first = detections[0]
  reference = first.feature_sizes()
  for dets in detections[1:]:
    for name, size in dets.feature_sizes().items():
      if size != reference[name]:
        show = lambda s: 'absent' if s is None else f'size {list(s)}'
        raise ValueError(f'{dets.source}: field {name} has {show(size)} per detection but '
                         f'{first.source} has {show(reference[name])}')


# ------------------------------------------------------------------------------------------------
# canonical .npz


def shot_index(shot: np.ndarray | None, num_frames: int) -> np.ndarray:
  """Per-frame shot index ``[T]`` int32 (0 for the first shot, +1 at each cut) from either form.

  ``shot`` is used as is when it is already an index (non-decreasing from 0 in steps of at most
  1); otherwise it is read as flags (non-zero on a frame that starts a new shot; a flag on frame 0
  starts shot 0). The forms are ambiguous only for flags on consecutive frames (``0 1 1 0`` would
  need two cuts in a row), which are read as one cut.
  """
  if shot is None:
    return np.zeros(num_frames, np.int32)
  shot = np.asarray(shot).astype(np.int64).reshape(-1)
  if shot.shape != (num_frames,):
    raise ValueError(f'shot must have one entry per frame ({num_frames}), got {shot.shape}')
  if num_frames == 0:
    return np.zeros(0, np.int32)
  steps = np.diff(shot)
  if shot[0] == 0 and np.all((steps >= 0) & (steps <= 1)):
    return shot.astype(np.int32)
  starts = shot != 0
  starts[0] = False
  return np.cumsum(starts).astype(np.int32)


def from_scene(scene: Mapping[str, Any], source: str = '<synthetic>') -> Detections:
  """``Detections`` of a scene dict in the canonical layout (``phalp_jax.synthetic.make_scene``)."""
  keys = ('frame', 'bbox', 'conf', 'appe', 'pose', 'loca', 'gt_id')
  return Detections(**{k: scene[k] for k in keys}, image_size=tuple(scene['image_size']),
                    shot=scene['shot'], num_frames=len(scene['shot']), source=source)


def load_npz(path: str | os.PathLike) -> Detections:
  """Reads a canonical detection file, checks it and applies :func:`sanitize`."""
  path = str(path)
  try:
    with np.load(path, allow_pickle=False) as data:
      fields = {k: data[k] for k in data.files}
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise ValueError(f'{path}: not a readable .npz detection file ({e})') from e
  for name in REQUIRED_FIELDS:
    if name not in fields:
      raise ValueError(f'{path}: missing required field {name} (has: {sorted(fields)})')
  kwargs = {k: fields[k] for k in REQUIRED_FIELDS + OPTIONAL_FIELDS if k in fields}
  if 'num_frames' in kwargs:
    kwargs['num_frames'] = int(kwargs['num_frames'])
  return sanitize(Detections(source=path, **kwargs))


def write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2,
               sort_keys: bool = False) -> None:
  """Writes ``obj`` as JSON (with a final newline) through :func:`atomic_write`."""
  text = (json.dumps(obj, indent=indent, sort_keys=sort_keys) + '\n').encode()
  atomic_write(os.fspath(path), lambda f: f.write(text))


def atomic_write(path: str, write) -> None:
  """Calls ``write(file)`` on a temporary file next to ``path``, then renames it onto ``path``."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def save_npz(dets: Detections, path: str | os.PathLike) -> None:
  """Writes ``dets`` as a canonical ``.npz`` (atomically: a temporary file, then a rename)."""
  arrays = {'frame': dets.frame, 'bbox': dets.bbox, 'conf': dets.conf, 'appe': dets.appe,
            'pose': dets.pose, 'loca': dets.loca,
            'image_size': np.asarray(dets.image_size, np.int64),
            'num_frames': np.asarray(dets.num_frames, np.int64)}
  for name in ('uv', 'gt_id', 'shot'):
    if getattr(dets, name) is not None:
      arrays[name] = getattr(dets, name)
  atomic_write(str(path), lambda f: np.savez(f, **arrays))


# ------------------------------------------------------------------------------------------------
# locations from boxes, image sizes


def location_from_boxes(bbox: np.ndarray, image_height: float) -> np.ndarray:
  """[N, 3] (centre x, centre y, n = log(h / image_height)) from [N, 4] x, y, w, h boxes.

  n stands in for log(1/z): box height is proportional to 1/z for a person of a given height.
  Boxes with h <= 0 give -inf / NaN, which :func:`sanitize` drops together with the box.
  """
  bbox = np.asarray(bbox, np.float64).reshape(-1, 4)
  with np.errstate(divide='ignore', invalid='ignore'):
    n = np.log(bbox[:, 3] / float(image_height))
  return np.stack([bbox[:, 0] + bbox[:, 2] / 2, bbox[:, 1] + bbox[:, 3] / 2, n], axis=1)


def _image_size_from_boxes(bbox: np.ndarray, source: str) -> tuple[int, int]:
  """A stand-in image size (the extent of the boxes) when the file and the caller give none."""
  if len(bbox):
    finite = bbox[np.isfinite(bbox).all(axis=1)]
  else:
    finite = bbox
  h = int(np.ceil(np.max(finite[:, 1] + finite[:, 3]))) if len(finite) else 1
  w = int(np.ceil(np.max(finite[:, 0] + finite[:, 2]))) if len(finite) else 1
  size = (max(h, 1), max(w, 1))
  log.warning('%s: no image size given or found; using the extent of the boxes %s (h, w), which '
              'shifts every nearness by a constant. Pass image_size=(h, w).', source, size)
  return size


# ------------------------------------------------------------------------------------------------
# MOTChallenge


def _read_seqinfo(path: str) -> dict[str, int]:
  """imHeight, imWidth, seqLength from the ``seqinfo.ini`` next to a MOT ``det/``/``gt/`` folder."""
  here = os.path.dirname(os.path.abspath(path))
  for directory in (here, os.path.dirname(here)):
    ini = os.path.join(directory, 'seqinfo.ini')
    if os.path.isfile(ini):
      parser = configparser.ConfigParser()
      parser.read(ini)
      if parser.has_section('Sequence'):
        seq = parser['Sequence']
        return {k: int(seq[k]) for k in ('imHeight', 'imWidth', 'seqLength') if k in seq}
  return {}


def _read_mot_table(path: str) -> np.ndarray:
  """The rows of a MOTChallenge text file as float64 [K, C] (C >= 7)."""
  rows = []
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      line = line.strip()
      if not line or line.startswith('#'):
        continue
      try:
        rows.append([float(v) for v in line.replace(',', ' ').split()])
      except ValueError as e:
        raise ValueError(f'{path}: line {lineno} is not numbers: {line!r}') from e
      if len(rows[-1]) < 6 or len(rows[-1]) != len(rows[0]):
        raise ValueError(f'{path}: line {lineno} has {len(rows[-1])} columns, expected at least 6 '
                         f'(frame, id, x, y, w, h, conf, ...) and as many as line 1')
  if not rows:
    return np.zeros((0, 7))
  table = np.asarray(rows, np.float64)
  if table.shape[1] == 6:
    table = np.concatenate([table, np.ones((len(table), 1))], axis=1)
  return table


def load_mot(path: str | os.PathLike, image_size: tuple[int, int] | None = None, *,
             kind: str = 'auto', classes: Sequence[int] = MOT_PEDESTRIAN_CLASSES) -> Detections:
  """Reads a MOTChallenge ``det.txt`` or ``gt.txt`` (boxes only) as :class:`Detections`.

  Columns: frame (1-based, stored 0-based), id, x, y, w, h, conf, then for gt.txt the consider flag
  is column 7 and the class column 8 (MOT16/17). ``kind='auto'`` treats a file named ``gt.txt`` or
  inside a ``gt`` folder as ground truth. Ground truth keeps rows with consider flag 1 and a class
  in ``classes`` (default: pedestrians only, as the MOT17 evaluation scores them; pass
  :data:`MOT_DISTRACTOR_CLASSES` to read the boxes it ignores); a file without class values (all
  -1, MOT15) keeps every considered row. Ground truth gets ``conf`` 1 and ``gt_id``; detections keep
  their confidence and get ``gt_id`` only when the file carries ids (not all -1, e.g. a tracker's
  output). ``loca`` comes from the box (module docstring); ``appe`` and ``pose`` are [N, 0].
  The image size is ``image_size``, else the sequence's ``seqinfo.ini``, else the extent of the
  boxes (with a warning); ``num_frames`` is ``seqLength`` when known.
  """
  path = str(path)
  if kind == 'auto':
    is_gt = (os.path.basename(path) == 'gt.txt'
             or os.path.basename(os.path.dirname(os.path.abspath(path))) == 'gt')
  elif kind in ('det', 'gt'):
    is_gt = kind == 'gt'
  else:
    raise ValueError(f"kind must be 'auto', 'det' or 'gt', got {kind!r}")
  table = _read_mot_table(path)
  if is_gt and len(table):
    keep = table[:, 6] == 1
    if table.shape[1] >= 8 and not np.all(table[:, 7] == -1):
      keep &= np.isin(table[:, 7], np.asarray(classes, np.float64))
    table = table[keep]
  info = _read_seqinfo(path)
  if image_size is None and 'imHeight' in info and 'imWidth' in info:
    image_size = (info['imHeight'], info['imWidth'])
  bbox = table[:, 2:6]
  if image_size is None:
    image_size = _image_size_from_boxes(bbox, path)
  ids = table[:, 1]
  gt_id = ids if (is_gt or (len(ids) and not np.all(ids == -1))) else None
  conf = np.ones(len(table)) if is_gt else table[:, 6]
  if len(table) and table[:, 0].min() < 1:
    raise ValueError(f'{path}: field frame holds {table[:, 0].min():g}; MOTChallenge frames start '
                     'at 1')
  frame = table[:, 0] - 1
  num_frames = info.get('seqLength')
  if num_frames is not None and len(frame) and frame.max() >= num_frames:
    log.warning('%s: frames reach %d but seqinfo.ini says seqLength=%d; using the frames',
                path, int(frame.max()) + 1, num_frames)
    num_frames = None
  n = len(table)
  dets = Detections(frame=frame, bbox=bbox, conf=conf, appe=np.zeros((n, 0), np.float32),
                    pose=np.zeros((n, 0), np.float32),
                    loca=location_from_boxes(bbox, image_size[0]), image_size=image_size,
                    gt_id=gt_id, num_frames=num_frames, source=path)
  return sanitize(dets)


def _as_track_rows(rows: np.ndarray, source: str = 'track rows') -> np.ndarray:
  """Track rows as float64 [K, 7]; [K, 6] rows (no confidence) get conf 1."""
  rows = np.asarray(rows, np.float64)
  if rows.size == 0:
    return np.zeros((0, 7))
  if rows.ndim != 2 or rows.shape[1] not in (6, 7):
    raise ValueError(f'{source}: rows must have shape [K, 6] or [K, 7] '
                     f'({", ".join(TRACK_COLUMNS)}), got {rows.shape}')
  if rows.shape[1] == 6:
    rows = np.concatenate([rows, np.ones((len(rows), 1))], axis=1)
  return rows


def save_mot(rows: np.ndarray, path: str | os.PathLike) -> None:
  """Writes track rows as a MOTChallenge result file ``frame,id,x,y,w,h,conf,-1,-1,-1`` (1-based).

  Rows are written sorted by frame, then id; boxes with 3 decimals. Atomic.
  """
  rows = _as_track_rows(rows, str(path))
  rows = rows[np.lexsort((rows[:, 1], rows[:, 0]))]
  lines = [f'{int(r[0]) + 1},{int(r[1])},{r[2]:.3f},{r[3]:.3f},{r[4]:.3f},{r[5]:.3f},{r[6]:.6g},'
           '-1,-1,-1\n' for r in rows]
  atomic_write(str(path), lambda f: f.write(''.join(lines).encode()))


def load_mot_tracks(path: str | os.PathLike) -> np.ndarray:
  """Reads a MOTChallenge result file (as :func:`save_mot` writes) as track rows, frames 0-based."""
  table = _read_mot_table(str(path))
  rows = table[:, :7].copy()
  rows[:, 0] -= 1
  return rows


# ------------------------------------------------------------------------------------------------
# the released tracker's pickle


class PhalpOutput(NamedTuple):
  """What :func:`load_phalp_pickle` returns."""

  detections: Detections  # one row per observed (frame, track): tracked_time == 0
  tracks: np.ndarray  # track rows [K, 7] of the same observations
  extras: dict[str, list]  # other per-track keys (smpl, camera, 3d_joints, ...) per detection row


_PICKLE_KNOWN = ('tid', 'bbox', 'conf', 'appe', 'pose', 'loca', 'uv', 'tracked_ids', 'tracked_bbox',
                 'tracked_time', 'size')


def _read_pickle(path: str) -> Any:
  try:
    import joblib  # pylint: disable=g-import-not-at-top
  except ImportError:
    joblib = None
  if joblib is not None:
    return joblib.load(path)
  try:
    with open(path, 'rb') as f:
      return pickle.load(f)
  except (ModuleNotFoundError, pickle.UnpicklingError) as e:
    raise ValueError(f'{path}: cannot be read with pickle ({type(e).__name__}: {e}); the '
                     'released tracker writes with joblib.dump: pip install joblib') from e


def _frame_number(entry: Mapping[str, Any], position: int) -> int:
  time = entry.get('time')
  return int(time) if time is not None else position


def load_phalp_pickle(path: str | os.PathLike, image_size: tuple[int, int] | None = None
                      ) -> PhalpOutput:
  """Reads the released PHALP tracker's output pickle (DESIGN section 6).

  The pickle maps frame names to per-frame dicts with ``time`` (0-based frame number; when missing,
  the position in sorted key order), ``shot`` and per-track lists (``tid``, ``bbox`` x, y, w, h,
  ``tracked_time``, ``conf``, ...). An entry with ``tracked_time`` 0 is an observation in that
  frame; those become detection rows (``gt_id`` = ``tid``) and track rows. Entries of lost tracks
  (``tracked_time`` > 0) repeat an old box and are skipped. ``appe`` and ``pose`` are read when
  stored, else [N, 0] (``uv`` likewise, else None); ``conf`` is 1 when not stored. ``loca``: a
  stored 3-dim one (our pickles) is used as is; otherwise x, y = the box centre x + w/2, y + h/2
  (the released code had (x + w)/2) and n = -log(t_z) from ``camera`` (or the camera in
  ``loca[90:93]`` of the 99-dim released feature) when every row has a positive one, else from
  the box height. The image size is ``image_size``, else the entries'
  ``size`` ([h, w]), else the extent of the boxes (with a warning). Other per-track keys come back
  in ``extras``, aligned with the detection rows.
  """
  path = str(path)
  data = _read_pickle(path)
  if not isinstance(data, Mapping):
    raise ValueError(f'{path}: expected a dict keyed by frame name, got {type(data).__name__}')
  keys = sorted(data, key=str)
  columns: dict[str, list] = {'frame': [], 'tid': [], 'bbox': [], 'conf': []}
  optional: dict[str, list] = {}
  sizes = []
  shots = {}
  for position, key in enumerate(keys):
    entry = data[key]
    if not isinstance(entry, Mapping):
      raise ValueError(f'{path}: frame {key!r} is a {type(entry).__name__}, expected a dict')
    t = _frame_number(entry, position)
    shots[t] = int(entry.get('shot', 0) or 0)
    for name in ('tid', 'bbox'):
      if name not in entry:
        raise ValueError(f'{path}: frame {key!r} is missing field {name}')
    count = len(entry['tid'])
    for name, value in entry.items():
      if isinstance(value, (list, tuple)) and name not in ('tracked_ids', 'tracked_bbox') and (
          len(value) != count):
        raise ValueError(f'{path}: frame {key!r} field {name} has {len(value)} entries but field '
                         f'tid has {count}')
    times = entry.get('tracked_time', [0] * count)
    for j in range(count):
      if int(times[j]) != 0:
        continue
      columns['frame'].append(t)
      columns['tid'].append(int(entry['tid'][j]))
      columns['bbox'].append(np.asarray(entry['bbox'][j], np.float64).reshape(4))
      columns['conf'].append(float(np.asarray(entry['conf'][j]).reshape(-1)[0])
                             if 'conf' in entry else 1.0)
      if 'size' in entry:
        sizes.append(np.asarray(entry['size'][j]).reshape(-1)[:2])
      for name, value in entry.items():
        if name in _PICKLE_KNOWN or not isinstance(value, (list, tuple)):
          continue
        optional.setdefault(name, []).append(value[j])
      for name in ('appe', 'pose', 'loca'):
        if name in entry:
          value = np.asarray(entry[name][j], np.float64).reshape(-1)
          optional.setdefault('_' + name, []).append(value)
      if 'uv' in entry:
        optional.setdefault('_uv', []).append(np.asarray(entry['uv'][j], np.float32))
  n = len(columns['frame'])
  bbox = np.asarray(columns['bbox'], np.float64).reshape(n, 4)
  if image_size is None and sizes:
    image_size = tuple(int(v) for v in sizes[0])
  if image_size is None:
    image_size = _image_size_from_boxes(bbox, path)
  loca = location_from_boxes(bbox, image_size[0])
  z = None
  stored_loca = optional.get('_loca', [])
  if n and len(stored_loca) == n and all(len(v) == 3 for v in stored_loca):
    loca = np.asarray(stored_loca, np.float64)  # already canonical (our own pickles)
  elif len(optional.get('camera', [])) == n:
    z = np.asarray([np.asarray(c, np.float64).reshape(-1)[2] for c in optional['camera']])
  elif len(optional.get('_loca', [])) == n and all(len(v) == 99 for v in optional['_loca']):
    z = np.asarray([v[92] for v in optional['_loca']])
  if n and z is not None:
    if np.all(np.isfinite(z) & (z > 0)):
      loca[:, 2] = -np.log(z)
    else:
      log.warning('%s: %d of %d camera depths are not positive; nearness comes from box heights '
                  'for the whole file', path, int((~(np.isfinite(z) & (z > 0))).sum()), n)

  def features(name: str) -> np.ndarray:
    rows = optional.pop('_' + name, None)
    if rows is None or len(rows) != n:
      return np.zeros((n, 0), np.float32)
    sizes_ = {len(r) for r in rows}
    if len(sizes_) > 1:
      raise ValueError(f'{path}: field {name} has different sizes per detection: {sorted(sizes_)}')
    return np.asarray(rows, np.float32).reshape(n, -1)

  appe, pose = features('appe'), features('pose')
  optional.pop('_loca', None)
  uv_rows = optional.pop('_uv', None)
  uv = None
  if n and uv_rows is not None and len(uv_rows) == n:
    if len({r.shape for r in uv_rows}) > 1:
      raise ValueError(f'{path}: field uv has different shapes per detection')
    uv = np.stack(uv_rows)
  num_frames = max(shots) + 1 if shots else 0
  shot = np.zeros(num_frames, np.int64)
  for t, s in shots.items():
    shot[t] = s
  dets = Detections(frame=np.asarray(columns['frame'], np.int64), bbox=bbox,
                    conf=np.asarray(columns['conf'], np.float64), appe=appe, pose=pose, loca=loca,
                    gt_id=np.asarray(columns['tid'], np.int64), uv=uv, image_size=image_size,
                    shot=shot,
                    num_frames=num_frames, source=path)
  index = _keep_index(dets)
  tracks = np.concatenate([dets.frame[:, None], dets.gt_id[:, None], dets.bbox, dets.conf[:, None]],
                          axis=1).astype(np.float64)[index]
  extras = {k: [v[i] for i in index] for k, v in optional.items() if len(v) == n}
  out = dets.select(index)
  _report_gaps(out)
  return PhalpOutput(out, tracks, extras)


def frame_name(video: str, frame: int) -> str:
  """The key of a frame in our pickles: ``'{video}/{frame:06d}.jpg'`` (0-based frame numbers)."""
  return f'{video}/{int(frame):06d}.jpg'


def save_phalp_pickle(tracks: np.ndarray, path: str | os.PathLike, *, video: str = 'video',
                      num_frames: int | None = None, shot: np.ndarray | None = None,
                      image_size: tuple[int, int] | None = None,
                      features: Mapping[str, Sequence[Any]] | None = None) -> None:
  """Writes track rows in the released tracker's pickle layout, readable by the released tools.

  One entry per frame ``0 .. num_frames - 1`` (default: the last frame in ``tracks`` + 1), keyed by
  :func:`frame_name`, with ``time``, ``shot`` and per-track lists ``tid``, ``bbox``, ``conf``,
  ``tracked_ids``, ``tracked_bbox``, ``tracked_time`` (always 0: we record observed tracks only,
  not the stale boxes of lost ones), ``size`` ([h, w], when ``image_size`` is given) and every key
  of ``features`` (a sequence aligned with ``tracks``' rows, e.g. ``appe``, ``pose``, ``smpl``).
  Written with the standard ``pickle`` module (protocol 4), which ``joblib.load`` also reads.
  Atomic.
  """
  rows = _as_track_rows(tracks, str(path))
  features = dict(features or {})
  for name, values in features.items():
    if len(values) != len(rows):
      raise ValueError(f'{path}: feature {name} has {len(values)} entries but there are '
                       f'{len(rows)} track rows')
  frames = rows[:, 0].astype(np.int64)
  if num_frames is None:
    num_frames = len(shot) if shot is not None else (int(frames.max()) + 1 if len(frames) else 0)
  if len(frames) and (frames.min() < 0 or frames.max() >= num_frames):
    raise ValueError(f'{path}: track frames {frames.min()}..{frames.max()} fall outside '
                     f'0..{num_frames - 1}')
  out = {}
  for t in range(num_frames):
    entry = {'time': t, 'shot': int(shot[t]) if shot is not None else 0}
    for name in ('tid', 'bbox', 'conf', 'tracked_ids', 'tracked_bbox', 'tracked_time'):
      entry[name] = []
    if image_size is not None:
      entry['size'] = []
    for name in features:
      entry[name] = []
    out[frame_name(video, t)] = entry
  for i in np.lexsort((rows[:, 1], frames)):
    entry = out[frame_name(video, frames[i])]
    tid, box = int(rows[i, 1]), rows[i, 2:6].copy()
    entry['tid'].append(tid)
    entry['bbox'].append(box)
    entry['conf'].append(float(rows[i, 6]))
    entry['tracked_ids'].append(tid)
    entry['tracked_bbox'].append(box.copy())
    entry['tracked_time'].append(0)
    if image_size is not None:
      entry['size'].append([int(image_size[0]), int(image_size[1])])
    for name, values in features.items():
      entry[name].append(values[i])
  atomic_write(str(path), lambda f: pickle.dump(out, f, protocol=4))
