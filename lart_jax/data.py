"""LART examples and Grain pipelines: tracklets in, fixed-size windows of N people out
(DESIGN section 7; seed 000 chapter 3, seed 001 appendix).

One example is (video, person of interest, window start). Its window covers ``T =
data.max_frames`` consecutive frames of the person of interest's tracklet (a random start in
training, deterministic from the seed and the epoch; ``start = 0, T, 2T, ...`` in evaluation, so
the windows of :func:`inference_windows` cover every frame exactly once). A tracklet shorter than
the window (or its last window) is padded: ``valid`` False, ``frame_ids`` -1, zeros elsewhere.
Context: up to ``N - 1`` other tracks of the same video (``N = data.num_people``) with a
detection in the window, aligned by frame id to the person of interest's frames: the nearest by
mean 3D distance (the pose vector's last 3 entries; frames where both are detected; never
co-detected = farthest), nearest in slot 1. Evaluation always takes these; training does too with
``data.context = 'nearest'`` (the default), or with ``'random'`` a random subset of those present
in random slots (the paper's sampling; on the synthetic benchmark it left the N = 5 model below
N = 1, README "LART").

Example (numpy; batches stack these on a leading axis)::

  pose         float32 [T, N, 229]   zeros where not detected
  appearance   float32 [T, N, Da]    Da = data.appearance_dim (0 -> [T, N, 0])
  detected     bool    [T, N]        person n detected at window frame t (n = 0: person of interest)
  labels       float32 [T, C]        person of interest's multi-hot labels (C = data.num_classes)
  label_level  int32   [T]           2 ground truth, 1 pseudo, 0 none (and padding)
  valid        bool    [T]           inside the tracklet (not padding)
  frame_ids    int32   [T]           video frame numbers, -1 for padding
  bbox         float32 [T, 4]        person of interest's x1, y1, x2, y2 / frame (w, h, w, h)
  video_index  int32   []            LartDataset.video_ids[video_index]
  track_index  int32   []            LartDataset.tracks[track_index] (a Tracklet: ids, frame names)

Config (``data``, an ``ml_collections.ConfigDict``; defaults in brackets):

* ``input`` [''] folder of tracklet pickles (:func:`lart_jax.tracklets.load_dir`); '' = synthetic
  videos generated in memory by :func:`lart_jax.synthetic.make_videos` (``synthetic_videos`` [8]
  training videos from ``synthetic_seed`` [0]; ``synthetic_eval_videos`` [4] held-out ones from a
  seed derived from it; the generator's knobs from :func:`synthetic_config`).
* ``eval_input`` [''] folder of held-out tracklets; '' with a folder ``input`` evaluates on the
  training tracklets (with a warning).
* ``max_frames`` [128] window length T, 1..128; ``num_people`` [5] N >= 1;
  ``appearance_dim`` [0] Da (0: pose only, appearance dropped; > 0: every tracklet must have
  features of that size); ``num_classes`` [60]: 60 maps the 80 AVA ids to the evaluated classes
  (:func:`lart_jax.ava.ava80_to_evaluated`), 80 keeps them.
* ``synthetic`` [absent] optional block of :class:`lart_jax.synthetic.SyntheticConfig` fields
  (e.g. ``frames = (60, 90)``); ``fps`` [30] the synthetic videos' frame rate (also what AVA
  timestamps are computed with downstream: seconds = frame id / fps).
* ``require_labels`` [False]: a tracklet without label keys is an error instead of unlabeled.
* ``context`` ['nearest']: how training picks the other people, 'nearest' or 'random' (above).
* ``worker_count`` [0]: Grain worker processes for training (0 = in-process).

Determinism and resumption: the training stream is a function of ``seed``, the process layout and
the data; its iterator's ``get_state()`` / ``set_state()`` (or Grain's Orbax checkpoint handlers)
resume it exactly.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import grain
import ml_collections
import numpy as np

from lart_jax import tracklets as tracklets_lib
from lart_jax.tracklets import POSE_DIM, Tracklet
from toto_jax import data as token_data

_log = logging.getLogger(__name__)

MAX_FRAMES = 128
_SALT_SHUFFLE, _SALT_WINDOW, _SALT_EVAL_VIDEOS = 1, 2, 3
CONTEXT_CHOICES = ('random', 'nearest')  # data.context: how training picks the other people
_int_field = token_data._int_field  # pylint: disable=protected-access  ('data.X must be ...')


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Settings:
  max_frames: int
  num_people: int
  appearance_dim: int
  num_classes: int
  require_labels: bool
  context: str


def _str_field(cfg: ml_collections.ConfigDict, name: str) -> str:
  v = cfg.get(name, '') or ''
  if not isinstance(v, str):
    raise ValueError(f'data.{name} must be a str (a folder, or empty), got {v!r}')
  return v


def _settings(data_cfg: ml_collections.ConfigDict) -> _Settings:
  if data_cfg is None:
    raise ValueError('data config is missing')
  num_classes = _int_field(data_cfg, 'num_classes', 1, default=60)
  if num_classes not in (60, 80):
    raise ValueError(f'data.num_classes must be 60 (AVA evaluated classes) or 80 (all AVA ids), '
                     f'got {num_classes}')
  require = data_cfg.get('require_labels', False)
  if not isinstance(require, bool):
    raise ValueError(f'data.require_labels must be a bool, got {require!r}')
  context = data_cfg.get('context', 'nearest')
  if context not in CONTEXT_CHOICES:
    raise ValueError(f'data.context must be one of {CONTEXT_CHOICES}, got {context!r}')
  return _Settings(max_frames=_int_field(data_cfg, 'max_frames', 1, default=MAX_FRAMES,
                                         hi=MAX_FRAMES),
                   num_people=_int_field(data_cfg, 'num_people', 1, default=5),
                   appearance_dim=_int_field(data_cfg, 'appearance_dim', 0, default=0),
                   num_classes=num_classes, require_labels=require, context=context)


def validate_data_config(data_cfg: ml_collections.ConfigDict) -> None:
  """Raises ``ValueError`` naming the ``data.*`` field of a config no pipeline can be built from
  (fields only; the files are checked when they are loaded)."""
  _settings(data_cfg)
  for name in ('input', 'eval_input'):
    spec = _str_field(data_cfg, name)
    if spec and not os.path.isdir(spec):
      raise ValueError(f'data.{name}: directory {spec!r} does not exist')
  if not _str_field(data_cfg, 'input'):
    synthetic_config(data_cfg)
    _int_field(data_cfg, 'synthetic_videos', 1, default=8)
    _int_field(data_cfg, 'synthetic_eval_videos', 0, default=4)
    _int_field(data_cfg, 'synthetic_seed', 0, default=0)
  _int_field(data_cfg, 'worker_count', 0, default=0)


# ------------------------------------------------------------------------------------------------
# The loaded dataset
# ------------------------------------------------------------------------------------------------

class LartDataset:
  """Videos of tracklets with flat indices: ``tracks[i]`` is in video ``track_video[i]``;
  ``video_tracks[v]`` lists video ``v``'s track indices; ``video_ids[v]`` names it."""

  def __init__(self, videos: Sequence[Sequence[Tracklet]], where: str = '<memory>'):
    self.where = where
    self.video_ids = [str(v[0].video_id) for v in videos]
    self.tracks: list[Tracklet] = []
    self.video_tracks: list[np.ndarray] = []
    video_of = []
    for v, tracks in enumerate(videos):
      first = len(self.tracks)
      self.tracks.extend(tracks)
      video_of.extend([v] * len(tracks))
      self.video_tracks.append(np.arange(first, len(self.tracks)))
    self.track_video = np.asarray(video_of, np.int64)
    if not self.tracks:
      raise ValueError(f'{where}: no tracklets')

  @property
  def num_videos(self) -> int:
    return len(self.video_ids)

  def __len__(self) -> int:
    return len(self.tracks)


_CACHE: dict[tuple, LartDataset] = {}


def synthetic_config(data_cfg: ml_collections.ConfigDict) -> Any:
  """The :class:`lart_jax.synthetic.SyntheticConfig` of ``data``: its defaults, overridden by the
  fields of the optional ``data.synthetic`` block, with ``fps`` from ``data.fps`` and
  ``appearance_dim`` from ``data.appearance_dim`` (when > 0) unless the block sets them."""
  from lart_jax import synthetic  # pylint: disable=g-import-not-at-top
  names = {f.name for f in dataclasses.fields(synthetic.SyntheticConfig)}
  block = data_cfg.get('synthetic', None)
  over = dict(block.to_dict() if hasattr(block, 'to_dict') else (block or {}))
  for k in over:
    if k not in names:
      raise ValueError(f'data.synthetic.{k} is not a field of lart_jax.synthetic.SyntheticConfig '
                       f'({", ".join(sorted(names))})')
  over = {k: tuple(v) if isinstance(v, list) else v for k, v in over.items()}
  da = _int_field(data_cfg, 'appearance_dim', 0, default=0)
  if da > 0:
    if over.setdefault('appearance_dim', da) != da:
      raise ValueError(f'data.synthetic.appearance_dim = {over["appearance_dim"]} but '
                       f'data.appearance_dim = {da}; they must agree')
  if data_cfg.get('fps', None) is not None:
    over.setdefault('fps', float(data_cfg.fps))
  try:
    return synthetic.SyntheticConfig(**over)
  except (TypeError, ValueError) as e:
    raise ValueError(f'data.synthetic: {e}') from None


def synthetic_split(data_cfg, split: str) -> tuple[int, int]:
  """``(number of videos, seed)`` of the in-memory synthetic ``'train'`` or ``'eval'`` split
  (``data.input = ''``): the one place both are derived."""
  seed = _int_field(data_cfg, 'synthetic_seed', 0, default=0)
  if split == 'train':
    return _int_field(data_cfg, 'synthetic_videos', 1, default=8), seed
  return (_int_field(data_cfg, 'synthetic_eval_videos', 0, default=4),
          token_data.derive_seed(seed, _SALT_EVAL_VIDEOS))


def synthetic_videos(data_cfg, split: str) -> list[list[dict]]:
  """The generator's track dicts of a synthetic split (:func:`synthetic_split`), e.g. to write
  the held-out split's AVA ground truth."""
  from lart_jax import synthetic  # pylint: disable=g-import-not-at-top
  n, seed = synthetic_split(data_cfg, split)
  return synthetic.make_videos(synthetic_config(data_cfg), n, seed, progress=n >= 50)


def load_dataset(data_cfg: ml_collections.ConfigDict, split: str = 'train') -> LartDataset | None:
  """The ``'train'`` or ``'eval'`` tracklets (cached per process); None when there is no eval set
  (synthetic with ``synthetic_eval_videos = 0``)."""
  if split not in ('train', 'eval'):
    raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
  s = _settings(data_cfg)
  inp, eval_inp = _str_field(data_cfg, 'input'), _str_field(data_cfg, 'eval_input')
  kw = {'appearance_dim': s.appearance_dim, 'require_labels': s.require_labels}
  if split == 'eval' and eval_inp:
    key = ('dir', eval_inp, s.appearance_dim, s.require_labels)
    make = lambda: LartDataset(tracklets_lib.load_dir(eval_inp, field='data.eval_input', **kw),
                               'data.eval_input')
  elif inp:
    if split == 'eval':
      _log.warning('data.eval_input is empty: evaluating on the training tracklets of %s', inp)
    key = ('dir', inp, s.appearance_dim, s.require_labels)
    make = lambda: LartDataset(tracklets_lib.load_dir(inp, field='data.input', **kw),
                               'data.input')
  else:
    n, seed = synthetic_split(data_cfg, split)
    if n == 0:
      return None
    key = ('synthetic', n, seed, repr(sorted(data_cfg.to_dict().items())) if hasattr(
        data_cfg, 'to_dict') else repr(data_cfg))
    where = f'data.synthetic ({split})'
    make = lambda: LartDataset(tracklets_lib.from_dicts(synthetic_videos(data_cfg, split),
                                                        where=where, **kw), where)
  if key not in _CACHE:
    _CACHE[key] = make()
  return _CACHE[key]


# ------------------------------------------------------------------------------------------------
# Examples
# ------------------------------------------------------------------------------------------------

def _map_labels(labels80: np.ndarray, num_classes: int) -> np.ndarray:
  if num_classes == 80:
    return labels80.astype(np.float32)
  from lart_jax import ava  # pylint: disable=g-import-not-at-top
  return np.asarray(ava.ava80_to_evaluated(labels80), np.float32)


def _aligned(other: Tracklet, frame_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Positions of ``frame_ids`` in ``other`` and whether ``other`` is detected there."""
  pos = np.searchsorted(other.frame_ids, frame_ids)
  pos = np.minimum(pos, len(other) - 1)
  hit = (other.frame_ids[pos] == frame_ids) & other.detected[pos]
  return pos, hit


def _choose_context(dataset: LartDataset, track: int, frame_ids: np.ndarray, poi_det: np.ndarray,
                    k: int, rng: np.random.Generator | None
                    ) -> list[tuple[int, np.ndarray, np.ndarray]]:
  """Up to ``k`` other tracks present in the window: (track, positions, detected) each; a
  random subset in random slots with ``rng`` (the paper's sampling), else the ``k`` nearest in
  order of mean 3D distance over the frames both are detected."""
  if k <= 0:
    return []
  poi = dataset.tracks[track]
  present = []
  for o in dataset.video_tracks[dataset.track_video[track]]:
    if o == track:
      continue
    pos, hit = _aligned(dataset.tracks[o], frame_ids)
    if hit.any():
      present.append((int(o), pos, hit))
  if len(present) <= k and rng is not None:
    order = rng.permutation(len(present))
  elif rng is not None:
    order = rng.choice(len(present), size=k, replace=False)
  else:
    here = np.searchsorted(poi.frame_ids, frame_ids)
    dist = []
    for o, pos, hit in present:
      both = hit & poi_det
      if both.any():
        d = np.linalg.norm(dataset.tracks[o].location[pos[both]] - poi.location[here[both]],
                           axis=-1).mean()
      else:
        d = np.inf
      dist.append(d)
    order = np.argsort(np.asarray(dist, np.float64), kind='stable')
  return [present[i] for i in order[:k]]


def make_example(dataset: LartDataset, track: int, start: int, *, max_frames: int,
                 num_people: int, appearance_dim: int, num_classes: int = 60,
                 rng: np.random.Generator | None = None, context: str = 'nearest'
                 ) -> dict[str, np.ndarray]:
  """The example of ``dataset.tracks[track]`` from frame position ``start`` (module docstring).
  Context people: with ``rng`` and ``context='random'`` a random subset in random slots
  (training); otherwise the nearest, nearest first (evaluation, and ``context='nearest'``)."""
  tr = dataset.tracks[track]
  t_len, n_people, da = max_frames, num_people, appearance_dim
  n = max(0, min(t_len, len(tr) - start))
  sl = slice(start, start + n)
  frame_ids = np.full(t_len, -1, np.int64)
  frame_ids[:n] = tr.frame_ids[sl]
  valid = np.zeros(t_len, bool)
  valid[:n] = True
  pose = np.zeros((t_len, n_people, POSE_DIM), np.float32)
  appearance = np.zeros((t_len, n_people, da), np.float32)
  detected = np.zeros((t_len, n_people), bool)

  def fill(slot: int, person: Tracklet, rows: np.ndarray, hit: np.ndarray) -> None:
    detected[:n, slot] = hit
    pose[:n, slot] = np.where(hit[:, None], person.pose[rows], 0.0)
    if da:
      if person.appearance_dim != da:
        raise ValueError(f'{person.source}: has {person.appearance_dim}-d appearance features, '
                         f'expected data.appearance_dim = {da}')
      appearance[:n, slot] = np.where(hit[:, None], person.appearance[rows], 0.0)

  rows = np.arange(start, start + n)
  fill(0, tr, rows, tr.detected[sl])
  for slot, (o, pos, hit) in enumerate(
      _choose_context(dataset, track, frame_ids[:n], tr.detected[sl], n_people - 1,
                      rng if context == 'random' else None), 1):
    fill(slot, dataset.tracks[o], pos, hit)

  labels = np.zeros((t_len, num_classes), np.float32)
  labels[:n] = _map_labels(tr.labels80[sl], num_classes)
  level = np.zeros(t_len, np.int32)
  level[:n] = tr.label_level[sl]
  bbox = np.zeros((t_len, 4), np.float32)
  hw = tr.frame_size[sl]
  scale = np.concatenate([hw[:, 1:2], hw[:, 0:1], hw[:, 1:2], hw[:, 0:1]], axis=1)
  with np.errstate(divide='ignore', invalid='ignore'):
    bbox[:n] = np.where(scale > 0, tr.bbox[sl] / scale, 0.0)
  return {'pose': pose, 'appearance': appearance, 'detected': detected, 'labels': labels,
          'label_level': level, 'valid': valid, 'frame_ids': frame_ids.astype(np.int32),
          'bbox': bbox, 'video_index': np.int32(dataset.track_video[track]),
          'track_index': np.int32(track)}


def _stack(examples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def inference_windows(dataset: LartDataset, max_frames: int) -> np.ndarray:
  """``[M, 3]`` int64 rows (video, track, start), ``start = 0, T, 2T, ...`` per track: every
  frame of every track in exactly one window (the last one padded)."""
  rows = []
  for i, tr in enumerate(dataset.tracks):
    for start in range(0, len(tr), max_frames):
      rows.append((int(dataset.track_video[i]), i, start))
  return np.asarray(rows, np.int64).reshape(-1, 3)


def _train_entries(dataset: LartDataset, max_frames: int) -> np.ndarray:
  """Track index per training example: ``ceil(len / T)`` entries per track, so long tracklets
  are visited as often as their frames need."""
  per = [math.ceil(len(tr) / max_frames) for tr in dataset.tracks]
  return np.repeat(np.arange(len(dataset.tracks)), per)


class _TrainBatch(grain.transforms.RandomMap):
  """A batch of entry indices -> a batch of examples (random starts and context people)."""

  def __init__(self, dataset: LartDataset, entries: np.ndarray, **kw):
    self.dataset, self.entries, self.kw = dataset, entries, kw

  def random_map(self, indices: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = []
    for track in self.entries[np.asarray(indices)]:
      length = len(self.dataset.tracks[int(track)])
      start = int(rng.integers(0, max(length - self.kw['max_frames'], 0) + 1))
      out.append(make_example(self.dataset, int(track), start, rng=rng, **self.kw))
    return _stack(out)


class _EvalExample(grain.transforms.Map):
  """A window row (video, track, start) -> its deterministic example."""

  def __init__(self, dataset: LartDataset, windows: np.ndarray, **kw):
    self.dataset, self.windows, self.kw = dataset, windows, kw

  def map(self, index: int) -> dict[str, np.ndarray]:
    _, track, start = self.windows[int(index)]
    return make_example(self.dataset, int(track), int(start), rng=None, **self.kw)


def _example_kw(s: _Settings) -> dict[str, Any]:
  return {'max_frames': s.max_frames, 'num_people': s.num_people,
          'appearance_dim': s.appearance_dim, 'num_classes': s.num_classes, 'context': s.context}


def _check_process(process_index: int, process_count: int, batch_size: int) -> None:
  for name, v, lo in (('batch_size', batch_size, 1), ('process_count', process_count, 1),
                      ('process_index', process_index, 0)):
    if not token_data._is_int(v) or v < lo:  # pylint: disable=protected-access
      raise ValueError(f'{name} must be an int >= {lo}, got {v!r}')
  if process_index >= process_count:
    raise ValueError(f'process_index {process_index} must be < process_count {process_count}')


# ------------------------------------------------------------------------------------------------
# Pipelines
# ------------------------------------------------------------------------------------------------

def num_train_examples(data_cfg: ml_collections.ConfigDict) -> int:
  """Training examples per epoch, all processes together (for epoch-based schedules)."""
  s = _settings(data_cfg)
  return int(len(_train_entries(load_dataset(data_cfg, 'train'), s.max_frames)))


def build_train_dataset(data_cfg: ml_collections.ConfigDict, *, seed: int, process_index: int,
                        process_count: int, batch_size: int) -> grain.IterDataset:
  """Infinite training stream of per-process batches (the module docstring's fields with a
  leading ``batch_size`` axis): shuffled per epoch from ``seed``, each process reading a
  disjoint ``process_index::process_count`` slice of the examples. Checkpointable."""
  if not token_data._is_int(seed) or seed < 0:  # pylint: disable=protected-access
    raise ValueError(f'seed must be an int >= 0, got {seed!r}')
  _check_process(process_index, process_count, batch_size)
  s = _settings(data_cfg)
  workers = _int_field(data_cfg, 'worker_count', 0, default=0)
  dataset = load_dataset(data_cfg, 'train')
  entries = _train_entries(dataset, s.max_frames)
  ds = grain.MapDataset.range(len(entries))
  ds = token_data.shard_for_process(ds, dataset.where, process_index, process_count, 1)
  ds = ds.shuffle(seed=token_data.derive_seed(seed, _SALT_SHUFFLE)).repeat(None)
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.random_map(_TrainBatch(dataset, entries, **_example_kw(s)),
                     seed=token_data.derive_seed(seed, _SALT_WINDOW))
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=8))
  if workers > 0:
    token_data.ensure_absl_flags_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return it


def build_eval_examples(data_cfg: ml_collections.ConfigDict, *, process_index: int,
                        process_count: int, batch_size: int,
                        num_batches: int) -> list[dict[str, np.ndarray]]:
  """``num_batches`` deterministic eval batches: this process's slice of
  :func:`inference_windows` of the eval tracklets in order (cycled when too few), nearest
  context people. Empty when there is no eval set."""
  _check_process(process_index, process_count, batch_size)
  if not token_data._is_int(num_batches) or num_batches < 1:  # pylint: disable=protected-access
    raise ValueError(f'num_batches must be an int >= 1, got {num_batches!r}')
  s = _settings(data_cfg)
  dataset = load_dataset(data_cfg, 'eval')
  if dataset is None:
    return []
  windows = inference_windows(dataset, s.max_frames)
  ds = grain.MapDataset.range(len(windows))
  ds = token_data.shard_for_process(ds, f'{dataset.where} (eval)', process_index, process_count,
                                    1)
  need = num_batches * batch_size
  ds = ds.repeat(-(-need // len(ds)))[:need]
  ds = ds.map(_EvalExample(dataset, windows, **_example_kw(s)))
  return [_stack([ds[i] for i in range(b * batch_size, (b + 1) * batch_size)])
          for b in range(num_batches)]


def example_spec(max_frames: int, num_people: int, appearance_dim: int,
                 num_classes: int = 60) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """Shape and dtype of every example field (no batch axis), e.g. for ``jax.eval_shape``."""
  t, n = max_frames, num_people
  return {'pose': ((t, n, POSE_DIM), np.dtype(np.float32)),
          'appearance': ((t, n, appearance_dim), np.dtype(np.float32)),
          'detected': ((t, n), np.dtype(bool)),
          'labels': ((t, num_classes), np.dtype(np.float32)),
          'label_level': ((t,), np.dtype(np.int32)), 'valid': ((t,), np.dtype(bool)),
          'frame_ids': ((t,), np.dtype(np.int32)), 'bbox': ((t, 4), np.dtype(np.float32)),
          'video_index': ((), np.dtype(np.int32)), 'track_index': ((), np.dtype(np.int32))}


def examples_spec(data_cfg: ml_collections.ConfigDict) -> dict[str, tuple[tuple[int, ...], Any]]:
  """:func:`example_spec` for ``data_cfg``."""
  s = _settings(data_cfg)
  return example_spec(s.max_frames, s.num_people, s.appearance_dim, s.num_classes)
