r"""Tracks people with PHALP (seed 000, chapter 2) and writes MOTChallenge text, the released
tracker's pickle and optional renders; or runs the synthetic benchmark.

  python -m launch.track --input FILE_OR_DIR --output DIR [--config configs/phalp.py] \
      [--params params.json] [--frames VIDEO] [--render] [--batch 16]
  python -m launch.track --benchmark synthetic [--preset easy|medium|hard|hard,medium|all] \
      [--videos 8] [--seed 0] [--num_frames T] [--output DIR_OR_FILE.json]

**Inputs** (one video each): a canonical detection ``.npz`` (:mod:`phalp_jax.io`), a
MOTChallenge ``det.txt`` (any ``.txt``; boxes only), a released-tracker pickle (``.pkl``,
``.pickle``, ``.joblib``), or a folder of any of these (its files, plus ``SEQ/det/det.txt`` of a
MOTChallenge split; files named ``gt.txt`` and ``gt/`` folders are ground truth, not inputs).
Video names: the file name without extension; ``SEQ/det/det.txt`` is ``SEQ``.

**Outputs** in ``--output``: per video ``{name}.txt`` (MOTChallenge, 1-based frames),
``{name}.pkl`` (the released layout, :func:`phalp_jax.io.save_phalp_pickle`; ``--store_features``
adds each row's ``appe``/``pose``/``loca``), ``{name}.mp4`` with ``--render``, and
``summary.json``: parameters, per-video counts, metrics, failures, timings.

**Ground truth and metrics** (IDF1, MOTA, HOTA, ID switches; :func:`phalp_jax.metrics.evaluate`,
IoU 0.5): a file next to the input when there is one (``DIR/gt/NAME.txt`` as
``phalp_jax.synthetic.write_benchmark`` writes, ``SEQ/gt/gt.txt`` for ``SEQ/det/det.txt``,
``DIR/gt.txt`` for ``DIR/det.txt``; read with :func:`phalp_jax.io.load_mot` as ground truth:
considered pedestrian rows), else the input's own ``gt_id`` (``.npz``, or a ``det.txt`` whose id
column is filled). A pickle's ids are the released tracker's output, not ground truth: they are
never scored. The aggregate treats all scored videos as one sequence (frames and ids offset so
that nothing matches across videos), which is TrackEval's combination over sequences: summed
CLEAR and identity counts, HOTA from summed TP/FN/FP with TP-weighted association.

**Parameters**: :class:`phalp_jax.state.PhalpParams` defaults, overridden by the ``tracker``
block of ``--config`` when it has one, overridden by ``--params`` (a ``launch.fit_phalp`` JSON:
its five fitted values and the settings it was fitted with). ``tracker`` block fields (any
subset; anything else is an error naming the field):

* PhalpParams fields: ``beta_a``, ``beta_p``, ``beta_xy``, ``beta_n``, ``beta_th`` (gate, product
  scale), ``history``, ``max_age``, ``n_init``, ``conf_threshold``, ``alpha0``, ``ridge``,
  ``interval``, ``xy_noise``, ``xy_speed``, ``n_noise``, ``n_speed``, ``lmc`` (bool),
  ``lmc_th``;
* ``capacity`` (initial tracklet slots per video; grows on demand) and ``pose_predictor`` (a
  ``launch.train`` workdir of ``configs/phalp.py:pose_predictor``; '' = last observation).

The flags ``--capacity`` and ``--pose_predictor`` override those two.

**Batches**: videos go through :func:`phalp_jax.tracker.track_batch` ``--batch`` at a time (one
compiled scan per batch). Files whose feature sizes differ (``io.check_compatible``: e.g. a
boxes-only ``det.txt`` next to ``.npz`` files with features) are tracked in separate groups of
equal sizes, with a warning naming the first file and field that differ (``--mixed_sizes=fail``
stops instead, exit 2, listing the groups).

**Shots**: from the input's ``shot`` field. ``--frames VIDEO`` (single input) runs the OpenCV
shot detector (:func:`phalp_jax.shots.detect_shots`) when the input has no ``shot``; with
``--render`` the boxes are drawn over that video's frames. ``--render`` alone draws on a blank
canvas of the detections' ``image_size`` (scaled to ``--render_width`` pixels wide).

**Errors**: a missing path, an unsupported file, a bad flag or config: a message naming it and
exit code 2. A corrupt or unreadable file among several is listed in ``summary.json``
(``failures``) and on stderr; the others are still tracked (exit 1 when no input could be
tracked).

**Benchmark** (``--benchmark synthetic``): per preset of :data:`phalp_jax.synthetic.PRESETS`,
``--videos`` scenes (video ``i`` from seed ``(--seed, i)``) tracked by the IoU baseline
(:func:`phalp_jax.baseline.track_iou`, at PHALP's confidence threshold), PHALP, and PHALP without
appearance / pose / location / nearness; a markdown table of MOTA, IDF1, HOTA, ID switches and
frames/s (all videos as one sequence; ground truth every person in the image, occluded ones too).
An ablated cue contributes nothing to the cost (:mod:`phalp_jax.cost`): appearance and pose are
``log(1 + beta D)`` terms, so ``beta_a`` / ``beta_p`` = :data:`CUE_OFF_SMALL` (1e-30) makes them
0 to float32 precision; location and nearness are ``D / (beta delta)`` terms, so ``beta_xy`` /
``beta_n`` = :data:`CUE_OFF_LARGE` (1e30) makes them 0. The same betas enter LMC's cost, so an
ablated cue is gone from LMC too. frames/s = total frames / wall time of the tracking call only
(scene generation and metrics excluded); PHALP is compiled beforehand by an untimed run of the same
call.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

SUMMARY = 'summary.json'
PICKLE_EXTENSIONS = ('.pkl', '.pickle', '.joblib')
INPUT_EXTENSIONS = ('.npz', '.txt') + PICKLE_EXTENSIONS
EXTRA_TRACKER_FIELDS = ('capacity', 'pose_predictor')
DEFAULT_BATCH = 16
CUE_OFF_SMALL = 1e-30  # beta_a / beta_p: log(1 + beta D) -> 0
CUE_OFF_LARGE = 1e30   # beta_xy / beta_n: D / (beta delta) -> 0
METHODS = ('IoU baseline', 'PHALP', 'w/o appearance', 'w/o pose', 'w/o location', 'w/o nearness')
ABLATIONS: dict[str, dict[str, float]] = {
    'PHALP': {},
    'w/o appearance': {'beta_a': CUE_OFF_SMALL},
    'w/o pose': {'beta_p': CUE_OFF_SMALL},
    'w/o location': {'beta_xy': CUE_OFF_LARGE},
    'w/o nearness': {'beta_n': CUE_OFF_LARGE},
}
METRIC_KEYS = ('idf1', 'mota', 'hota', 'num_switches')


class UsageError(ValueError):
  """A bad path, flag or config: reported with exit code 2."""


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Input:
  """One input file: its path, kind ('npz', 'mot' or 'pickle') and video name."""
  path: str
  kind: str
  name: str


def _kind(path: str) -> str | None:
  ext = os.path.splitext(path)[1].lower()
  if ext == '.npz':
    return 'npz'
  if ext == '.txt':
    return 'mot'
  if ext in PICKLE_EXTENSIONS:
    return 'pickle'
  return None


def _name(path: str) -> str:
  parent = os.path.dirname(os.path.abspath(path))
  if os.path.basename(path) == 'det.txt' and os.path.basename(parent) == 'det':
    return os.path.basename(os.path.dirname(parent))  # MOTChallenge SEQ/det/det.txt
  return os.path.splitext(os.path.basename(path))[0]


def list_inputs(spec: str) -> list[Input]:
  """The inputs of ``--input`` (a file or a folder), in sorted order, with unique names."""
  if not spec:
    raise UsageError('--input is required (a detection file or a folder of them)')
  if not os.path.exists(spec):
    raise UsageError(f'--input: {spec!r} does not exist')
  if os.path.isdir(spec):
    paths = [p for p in sorted(glob.glob(os.path.join(spec, '*')))
             if os.path.isfile(p) and _kind(p) and os.path.basename(p) != 'gt.txt']
    paths += sorted(glob.glob(os.path.join(spec, '*', 'det', 'det.txt')))
    if not paths:
      raise UsageError(f'--input: {spec!r} holds no detection files '
                       f'({", ".join(INPUT_EXTENSIONS)} or SEQ/det/det.txt)')
  else:
    if _kind(spec) is None:
      raise UsageError(f'--input: {spec!r} is not a detection file (expected one of '
                       f'{", ".join(INPUT_EXTENSIONS)})')
    paths = [spec]
  inputs = [Input(p, _kind(p) or 'mot', _name(p)) for p in paths]
  counts: dict[str, int] = {}
  for inp in inputs:
    counts[inp.name] = counts.get(inp.name, 0) + 1
  for inp in inputs:  # a.npz and a.pkl side by side: a_npz, a_pkl
    if counts[inp.name] > 1:
      inp.name = f'{inp.name}_{os.path.splitext(inp.path)[1].lstrip(".").lower()}'
  return inputs


def _gt_file(inp: Input) -> str | None:
  """The ground-truth file next to an input, if any (see the module docstring)."""
  directory = os.path.dirname(os.path.abspath(inp.path))
  stem = os.path.splitext(os.path.basename(inp.path))[0]
  candidates = [os.path.join(directory, 'gt', f'{stem}.txt')]
  if os.path.basename(inp.path) == 'det.txt':
    candidates += [os.path.join(directory, 'gt.txt'),
                   os.path.join(os.path.dirname(directory), 'gt', 'gt.txt')]
  return next((c for c in candidates if os.path.isfile(c)), None)


@dataclasses.dataclass
class Video:
  """A loaded input: detections, ground-truth rows (or None) and where they came from."""
  input: Input
  dets: Any  # io.Detections
  gt: np.ndarray | None
  gt_source: str | None


def load_input(inp: Input) -> Video:
  """Reads one input and its ground truth; raises on a corrupt or malformed file."""
  from phalp_jax import io as io_lib
  if inp.kind == 'npz':
    dets = io_lib.load_npz(inp.path)
  elif inp.kind == 'mot':
    dets = io_lib.load_mot(inp.path, kind='det')
  else:
    dets = io_lib.load_phalp_pickle(inp.path).detections
  gt_path = _gt_file(inp)
  if gt_path is not None:
    g = io_lib.load_mot(gt_path, dets.image_size, kind='gt')
    gt = np.concatenate([g.frame[:, None], g.gt_id[:, None], g.bbox], axis=1).astype(np.float64)
    return Video(inp, dets, gt, gt_path)
  if dets.gt_id is not None and inp.kind != 'pickle':
    keep = dets.gt_id >= 0
    gt = np.concatenate([dets.frame[keep, None], dets.gt_id[keep, None], dets.bbox[keep]],
                        axis=1).astype(np.float64)
    return Video(inp, dets, gt, 'gt_id')
  return Video(inp, dets, None, None)


# ------------------------------------------------------------------------------------------------
# Parameters
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Settings:
  """What the tracker runs with: params, initial capacity, pose predictor workdir ('' = none)."""
  params: Any  # PhalpParams
  capacity: int
  pose_predictor: str = ''
  sources: tuple[str, ...] = ()


def settings_from(config: Any = None, params_path: str | None = None,
                  capacity: int | None = None, pose_predictor: str | None = None) -> Settings:
  """Defaults < ``config.tracker`` < ``--params`` JSON; flags override capacity/pose_predictor."""
  from phalp_jax import fit as fit_lib
  from phalp_jax import tracker as tracker_lib
  from phalp_jax.state import VECTOR_FIELDS, PhalpParams
  names = {f.name for f in dataclasses.fields(PhalpParams)}
  values: dict[str, Any] = {}
  extra: dict[str, Any] = {}
  sources = ['defaults']
  block = None
  if config is not None:
    block = config.get('tracker') if hasattr(config, 'get') else getattr(config, 'tracker', None)
  if block is not None:
    items = block.items() if hasattr(block, 'items') else vars(block).items()
    for key, value in items:
      if key in names:
        values[key] = bool(value) if key == 'lmc' else value
      elif key in EXTRA_TRACKER_FIELDS:
        extra[key] = value
      else:
        raise UsageError(f'--config: field tracker.{key} is not a tracker setting (expected '
                         f'PhalpParams fields {sorted(names)} or {list(EXTRA_TRACKER_FIELDS)})')
    sources.append('config.tracker')
  elif config is not None:
    print('[track] note: the config has no tracker block; using PhalpParams defaults',
          file=sys.stderr, flush=True)
  try:
    params = PhalpParams(**values)
  except (TypeError, ValueError) as e:
    raise UsageError(f'--config: tracker block: {e}') from e
  if params_path:
    if not os.path.isfile(params_path):
      raise UsageError(f'--params: {params_path!r} does not exist')
    try:
      with open(params_path) as f:
        fitted_others = set(json.load(f).get('other_params', {}))
      keep = {k: v for k, v in values.items()
              if k not in VECTOR_FIELDS and k not in fitted_others}
      params = fit_lib.load_params(params_path, **keep)
    except (OSError, TypeError, ValueError, AttributeError) as e:
      raise UsageError(f'--params: {params_path}: {e}') from e
    sources.append(f'params:{params_path}')
  cap = capacity or int(extra.get('capacity') or tracker_lib.DEFAULT_CAPACITY)
  if cap < 1:
    raise UsageError(f'capacity must be >= 1, got {cap}')
  pose = pose_predictor if pose_predictor is not None else str(extra.get('pose_predictor') or '')
  return Settings(params, cap, pose, tuple(sources))


def _pose_fn(workdir: str):
  if not workdir:
    return None
  if not os.path.exists(workdir):
    raise UsageError(f'pose_predictor: {workdir!r} does not exist')
  from phalp_jax import pose
  return pose.load_pose_predictor(workdir)


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------


def _headline(m: Mapping[str, Any] | None) -> dict[str, Any] | None:
  return None if m is None else {k: m[k] for k in METRIC_KEYS}


def aggregate_metrics(gts: Sequence[np.ndarray], preds: Sequence[np.ndarray]) -> dict:
  """Metrics of several videos as one sequence: frames and ids offset per video so nothing
  matches across videos (TrackEval's combination over sequences)."""
  from phalp_jax import metrics
  all_gt, all_pred = [], []
  frame_offset, id_offset = 0, 0
  for gt, pred in zip(gts, preds):
    gt = np.asarray(gt, np.float64).reshape(-1, 6) if np.size(gt) else np.zeros((0, 6))
    pred = np.asarray(pred, np.float64)[:, :6] if np.size(pred) else np.zeros((0, 6))
    frames = np.concatenate([gt[:, 0], pred[:, 0]])
    ids = np.concatenate([gt[:, 1], pred[:, 1]])
    for rows, out in ((gt, all_gt), (pred, all_pred)):
      shifted = rows.copy()
      shifted[:, 0] += frame_offset
      shifted[:, 1] += id_offset - (ids.min() if len(ids) else 0)
      out.append(shifted)
    frame_offset += int(frames.max()) + 1 if len(frames) else 0
    id_offset += int(ids.max() - ids.min()) + 1 if len(ids) else 0
  return metrics.evaluate(np.concatenate(all_gt) if all_gt else np.zeros((0, 6)),
                          np.concatenate(all_pred) if all_pred else np.zeros((0, 6)))


def _format_metrics(m: Mapping[str, Any]) -> str:
  return (f"IDF1 {100 * m['idf1']:.1f}  MOTA {100 * m['mota']:.1f}  HOTA {100 * m['hota']:.1f}  "
          f"switches {m['num_switches']}")


# ------------------------------------------------------------------------------------------------
# Tracking files
# ------------------------------------------------------------------------------------------------


def _shot_flags(dets) -> np.ndarray:
  """Per-frame flags (1 on a frame that starts a new shot), the documented ``shot`` form."""
  from phalp_jax.tracker import shot_index
  index = shot_index(dets.shot, dets.num_frames)
  flags = np.zeros(dets.num_frames, np.int64)
  if dets.num_frames > 1:
    flags[1:] = np.diff(index) > 0
  return flags


def _row_features(dets, rows: np.ndarray) -> dict[str, list]:
  """``appe``/``pose``/``loca`` of the detection behind each output row (same frame, box, conf)."""
  key = lambda f, b, c: (int(f), *np.asarray(b, np.float64).tolist(), float(c))
  where = {key(f, b, c): i for i, (f, b, c) in enumerate(zip(dets.frame, dets.bbox, dets.conf))}
  index = [where[key(r[0], r[2:6], r[6])] for r in rows]
  return {'appe': [dets.appe[i] for i in index], 'pose': [dets.pose[i] for i in index],
          'loca': [dets.loca[i].astype(np.float32) for i in index]}


def _with_video_shots(video: Video, frames_path: str) -> tuple[Video, int]:
  """Shots from ``--frames`` when the input has none; returns the video and its frame count."""
  from phalp_jax import shots
  from tokenizers_jax.video import VideoError, probe_video
  try:
    count = probe_video(frames_path, exact=False).frames
  except VideoError as e:
    raise UsageError(f'--frames: {e}') from e
  dets = video.dets
  if video.dets.shot is None:
    try:
      index = shots.detect_shots(frames_path)
    except VideoError as e:
      raise UsageError(f'--frames: {e}') from e
    if len(index) < dets.num_frames:
      raise UsageError(f'--frames: {frames_path!r} has {len(index)} frames but {dets.source} '
                       f'has detections up to frame {dets.num_frames - 1}')
    dets = dataclasses.replace(dets, shot=index, num_frames=len(index))
    count = len(index)
  return dataclasses.replace(video, dets=dets), count


def _fps_of(path: str) -> float:
  from tokenizers_jax.video import probe_video
  fps = probe_video(path, exact=False).fps
  return fps if fps > 0 else 30.0


def _group_by_sizes(videos: list[Video]) -> list[list[Video]]:
  groups: dict[tuple, list[Video]] = {}
  for v in videos:
    key = tuple(sorted((k, None if s is None else tuple(s))
                       for k, s in v.dets.feature_sizes().items()))
    groups.setdefault(key, []).append(v)
  return list(groups.values())


def _sizes_message(groups: list[list[Video]]) -> str:
  from phalp_jax import io as io_lib
  try:
    io_lib.check_compatible([g[0].dets for g in groups])
    first = ''
  except ValueError as e:
    first = str(e)
  listing = '; '.join(
      f"{', '.join(os.path.basename(v.input.path) for v in g)}: "
      + ', '.join(f'{k} {"absent" if s is None else list(s)}'
                  for k, s in g[0].dets.feature_sizes().items())
      for g in groups)
  return f'feature sizes differ between files ({first}); groups: {listing}'


@dataclasses.dataclass
class TrackOptions:
  """Options of :func:`track_files` (the command's flags)."""
  input: str
  output: str
  batch: int = DEFAULT_BATCH
  frames: str | None = None
  render: bool = False
  render_width: int = 640
  fps: float = 30.0
  store_features: bool = False
  mixed_sizes: str = 'group'
  progress: bool = True


def track_files(opts: TrackOptions, settings: Settings) -> dict:
  """Tracks every input of ``opts.input``, writes the outputs and ``summary.json``; returns it."""
  from tqdm import tqdm

  from phalp_jax import io as io_lib
  from phalp_jax import tracker as tracker_lib
  from phalp_jax.render import render_tracks

  if opts.batch < 1:
    raise UsageError(f'--batch must be >= 1, got {opts.batch}')
  if opts.mixed_sizes not in ('group', 'fail'):
    raise UsageError(f"--mixed_sizes must be 'group' or 'fail', got {opts.mixed_sizes!r}")
  if not opts.output:
    raise UsageError('--output is required (the folder for the results)')
  inputs = list_inputs(opts.input)
  if os.path.isdir(opts.input) and os.path.abspath(opts.input) == os.path.abspath(opts.output):
    raise UsageError(f'--output: {opts.output!r} is the input folder; its outputs would be read '
                     'as inputs next time')
  if opts.frames is not None:
    if len(inputs) != 1:
      raise UsageError(f'--frames needs a single input file, --input has {len(inputs)}')
    if not os.path.isfile(opts.frames):
      raise UsageError(f'--frames: {opts.frames!r} does not exist')
  pose_fn = _pose_fn(settings.pose_predictor)
  os.makedirs(opts.output, exist_ok=True)
  start = time.perf_counter()
  failures: list[dict[str, str]] = []

  def fail(path: str, error: BaseException | str) -> None:
    message = error if isinstance(error, str) else f'{type(error).__name__}: {error}'
    failures.append({'input': path, 'error': message})
    print(f'[track] failed: {path}: {message}', file=sys.stderr, flush=True)

  videos: list[Video] = []
  for inp in inputs:
    try:
      videos.append(load_input(inp))
    except Exception as e:  # noqa: BLE001 - a bad file is reported, the others are tracked
      fail(inp.path, e)
  frame_count = None
  if opts.frames is not None and videos:
    videos[0], frame_count = _with_video_shots(videos[0], opts.frames)
  load_s = time.perf_counter() - start

  groups = _group_by_sizes(videos)
  size_note = None
  if len(groups) > 1:
    size_note = _sizes_message(groups)
    if opts.mixed_sizes == 'fail':
      raise UsageError(size_note + ' (--mixed_sizes=fail)')
    print(f'[track] warning: {size_note}; tracking each group separately', file=sys.stderr,
          flush=True)

  params = settings.params
  results: dict[str, np.ndarray] = {}
  track_s = 0.0
  total_frames = sum(v.dets.num_frames for v in videos)
  with tqdm(total=len(videos), unit='video', disable=not opts.progress, dynamic_ncols=True,
            file=sys.stderr, desc='track') as bar:
    for group in groups:
      for i in range(0, len(group), opts.batch):
        chunk = group[i:i + opts.batch]
        t0 = time.perf_counter()
        try:
          rows = tracker_lib.track_batch([v.dets for v in chunk], params, settings.capacity,
                                         pose_predictor=pose_fn, grow=True)
        except Exception as e:  # noqa: BLE001 - one failing batch must not stop the rest
          for v in chunk:
            fail(v.input.path, e)
          rows = None
        track_s += time.perf_counter() - t0
        if rows is not None:
          for v, r in zip(chunk, rows):
            results[v.input.name] = r
        bar.update(len(chunk))

  records, scored = [], []
  for v in videos:
    if v.input.name not in results:
      continue
    rows, d, name = results[v.input.name], v.dets, v.input.name
    try:
      io_lib.save_mot(rows, os.path.join(opts.output, f'{name}.txt'))
      features = _row_features(d, rows) if opts.store_features else None
      io_lib.save_phalp_pickle(rows, os.path.join(opts.output, f'{name}.pkl'), video=name,
                               num_frames=d.num_frames, shot=_shot_flags(d),
                               image_size=d.image_size, features=features)
      mp4 = None
      if opts.render:
        fps = _fps_of(opts.frames) if opts.frames else opts.fps
        mp4 = render_tracks(rows, opts.frames, d.image_size, os.path.join(opts.output, f'{name}.mp4'),
                            fps, num_frames=frame_count or d.num_frames, width=opts.render_width)
    except Exception as e:  # noqa: BLE001 - e.g. a full disk for one file: report, go on
      fail(v.input.path, e)
      continue
    m = None
    if v.gt is not None:
      from phalp_jax import metrics
      try:
        m = metrics.evaluate(v.gt, rows[:, :6])
        scored.append((v.gt, rows))
      except ValueError as e:  # malformed ground truth: the tracks are written, only no scores
        print(f'WARNING: {v.input.path}: no metrics for this video ({e})', file=sys.stderr,
              flush=True)
    shots = int(tracker_lib.shot_index(d.shot, d.num_frames)[-1]) + 1 if d.num_frames else 0
    records.append({
        'name': name, 'input': os.path.abspath(v.input.path), 'kind': v.input.kind,
        'frames': d.num_frames, 'detections': len(d), 'shots': shots,
        'image_size': list(d.image_size), 'rows': int(len(rows)),
        'tracks': int(len(np.unique(rows[:, 1]))) if len(rows) else 0,
        'mot': f'{name}.txt', 'pickle': f'{name}.pkl',
        'render': os.path.basename(mp4) if mp4 else None,
        'ground_truth': v.gt_source, 'metrics': _headline(m), 'all_metrics': m})
    if m is not None:
      print(f'[track] {name}: {_format_metrics(m)}', flush=True)
  aggregate = None
  if scored:
    aggregate = aggregate_metrics([g for g, _ in scored], [r for _, r in scored])
    print(f'[track] aggregate over {len(scored)} video(s): {_format_metrics(aggregate)}',
          flush=True)
  summary = {
      'input': os.path.abspath(opts.input), 'output': os.path.abspath(opts.output),
      'params': dataclasses.asdict(params), 'params_from': list(settings.sources),
      'capacity': settings.capacity, 'pose_predictor': settings.pose_predictor or None,
      'frames_video': os.path.abspath(opts.frames) if opts.frames else None,
      'inputs': len(inputs), 'tracked': len(records), 'failed': len(failures),
      'videos': records, 'failures': failures,
      'feature_groups': len(groups), 'feature_sizes_note': size_note,
      'aggregate': _headline(aggregate), 'aggregate_all': aggregate,
      'aggregate_definition': 'all scored videos as one sequence (TrackEval combination)',
      'seconds': {'load': round(load_s, 3), 'track': round(track_s, 3),
                  'total': round(time.perf_counter() - start, 3)},
      'frames_per_second': round(total_frames / track_s, 1) if track_s > 0 else None,
  }
  io_lib.atomic_write(os.path.join(opts.output, SUMMARY),
                       lambda f: f.write((json.dumps(summary, indent=1) + '\n').encode()))
  print(f'[track] {len(records)} of {len(inputs)} video(s) tracked, {len(failures)} failed; '
        f'{os.path.join(os.path.abspath(opts.output), SUMMARY)}', flush=True)
  return summary


# ------------------------------------------------------------------------------------------------
# Benchmark
# ------------------------------------------------------------------------------------------------


def _scenes(preset: str, videos: int, seed: int, num_frames: int | None):
  """Detections and ground-truth rows of ``videos`` synthetic scenes of ``preset``."""
  from phalp_jax import io as io_lib
  from phalp_jax import synthetic
  cfg = synthetic.get_config(preset, **({'num_frames': num_frames} if num_frames else {}))
  dets, gts = [], []
  for i in range(videos):
    s = synthetic.make_scene(cfg, seed=(seed, i))
    dets.append(io_lib.from_scene(s, source=f'synthetic:{preset}:{seed}:{i}'))
    gts.append(np.asarray(s['gt_tracks'], np.float64)[:, :6])
  return dets, gts


def benchmark(presets: Sequence[str] = ('easy', 'medium', 'hard'), videos: int = 8,
              seed: int = 0, *, num_frames: int | None = None, batch: int = DEFAULT_BATCH,
              settings: Settings | None = None, progress: bool = False) -> list[dict]:
  """One record per (preset, method of :data:`METHODS`): MOTA, IDF1, HOTA, ID switches, frames/s.

  Metrics treat the preset's videos as one sequence (:func:`aggregate_metrics`); frames/s is
  total frames over the wall time of the tracking call alone, PHALP compiled beforehand.
  """
  from phalp_jax import baseline, synthetic
  from phalp_jax import tracker as tracker_lib
  settings = settings or settings_from()
  pose_fn = _pose_fn(settings.pose_predictor)
  for p in presets:
    if p not in synthetic.PRESETS:
      raise UsageError(f'--preset: expected one of {sorted(synthetic.PRESETS)} or all, got {p!r}')
  if videos < 1 or batch < 1:
    raise UsageError(f'--videos and --batch must be >= 1, got {videos} and {batch}')
  records = []
  for preset in presets:
    dets, gts = _scenes(preset, videos, seed, num_frames)
    total = sum(d.num_frames for d in dets)

    def run_phalp(params):
      out = []
      for i in range(0, len(dets), batch):
        out += tracker_lib.track_batch(dets[i:i + batch], params, settings.capacity,
                                       pose_predictor=pose_fn)
      return out

    for method in METHODS:
      if method == 'IoU baseline':
        t0 = time.perf_counter()
        preds = [baseline.track_iou(d, conf_threshold=settings.params.conf_threshold)
                 for d in dets]
        seconds = time.perf_counter() - t0
        overrides: dict[str, float] = {}
      else:
        overrides = ABLATIONS[method]
        params = dataclasses.replace(settings.params, **overrides)
        run_phalp(params)  # compile (and warm up) outside the timed call
        t0 = time.perf_counter()
        preds = run_phalp(params)
        seconds = time.perf_counter() - t0
      m = aggregate_metrics(gts, preds)
      records.append({
          'preset': preset, 'method': method, 'videos': videos, 'frames': total,
          'mota': m['mota'], 'idf1': m['idf1'], 'hota': m['hota'],
          'num_switches': m['num_switches'], 'frames_per_second': total / max(seconds, 1e-9),
          'seconds': seconds, 'overrides': overrides})
      if progress:
        print(f'[track] {preset} {method}: {_format_metrics(m)}  '
              f'{records[-1]["frames_per_second"]:.0f} frames/s', file=sys.stderr, flush=True)
  return records


def format_table(records: Sequence[Mapping[str, Any]], preset: str, seed: int = 0) -> str:
  """A markdown table (Tables 2.1/2.2 shape) of one preset's records."""
  rows = [r for r in records if r['preset'] == preset]
  if not rows:
    return ''
  head = (f"Synthetic '{preset}': {rows[0]['videos']} videos, {rows[0]['frames']} frames, "
          f'seed {seed}\n\n'
          '| Method | MOTA ↑ | IDF1 ↑ | HOTA ↑ | ID switches ↓ | frames/s ↑ |\n'
          '|---|---:|---:|---:|---:|---:|\n')
  body = ''.join(
      f"| {r['method']} | {100 * r['mota']:.1f} | {100 * r['idf1']:.1f} | {100 * r['hota']:.1f} "
      f"| {r['num_switches']} | {r['frames_per_second']:.0f} |\n" for r in rows)
  return head + body


BENCHMARK_NOTE = (
    'MOTA, IDF1, HOTA in %, all videos of a preset as one sequence (IoU 0.5; ground truth: every '
    'person in the image, occluded ones included). frames/s: total frames / wall time of the '
    'tracking call only (scene generation and metrics excluded); PHALP is compiled beforehand by '
    'an untimed run of the same call; the IoU baseline (NumPy/SciPy, PHALP\'s confidence '
    'threshold) needs no compile. Ablations: beta_a or beta_p = 1e-30 (log(1 + beta D) = 0), '
    'beta_xy or beta_n = 1e30 (D / (beta delta) = 0), in the association and LMC costs alike.')


def run_benchmark(name: str, presets: str, videos: int, seed: int, num_frames: int | None,
                  output: str | None, batch: int, settings: Settings,
                  progress: bool = True) -> list[dict]:
  """``--benchmark``: prints a table per preset; writes JSON when ``output`` is given."""
  from phalp_jax import synthetic
  if name != 'synthetic':
    raise UsageError(f"--benchmark: only 'synthetic' is available, got {name!r}")
  chosen = (list(synthetic.PRESETS) if presets == 'all'
            else [p.strip() for p in presets.split(',') if p.strip()])
  records = benchmark(chosen, videos, seed, num_frames=num_frames, batch=batch, settings=settings,
                      progress=progress)
  device = _device()
  for preset in chosen:
    print('\n' + format_table(records, preset, seed))
  print(f'{BENCHMARK_NOTE} Device: {device}.')
  if output:
    path = output if output.endswith('.json') else os.path.join(output, 'benchmark_synthetic.json')
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    payload = {'benchmark': name, 'presets': chosen, 'videos': videos, 'seed': seed,
               'num_frames': num_frames, 'params': dataclasses.asdict(settings.params),
               'device': device, 'note': BENCHMARK_NOTE, 'results': records,
               'tables': {p: format_table(records, p, seed) for p in chosen}}
    from phalp_jax import io as io_lib
    io_lib.atomic_write(path, lambda f: f.write(
        (json.dumps(payload, indent=1) + '\n').encode()))
    print(f'[track] wrote {path}')
  return records


def _device() -> str:
  import jax
  d = jax.devices()[0]
  return f'{d.platform} ({d.device_kind}) x{jax.device_count()}'


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def define_flags(flag_values=None, argv: Sequence[str] | None = None) -> None:
  """Defines the command's flags on ``flag_values`` (default ``absl.flags.FLAGS``); ``argv`` is
  what ``--config.tracker.X=...`` overrides are read from (default ``sys.argv``)."""
  from absl import flags
  from ml_collections import config_flags
  fv = flag_values if flag_values is not None else flags.FLAGS
  config_flags.DEFINE_config_file(
      'config', None, 'optional config (e.g. configs/phalp.py) with a tracker block',
      flag_values=fv, lock_config=True, sys_argv=list(argv) if argv is not None else None)
  d = lambda kind, name, default, text, **kw: getattr(flags, f'DEFINE_{kind}')(
      name, default, text, flag_values=fv, **kw)
  d('string', 'input', None, 'detection file (.npz, MOT .txt, .pkl) or a folder of them')
  d('string', 'output', None, 'output folder (tracking) / JSON file or folder (benchmark)')
  d('string', 'params', None, 'fitted parameters JSON from launch.fit_phalp')
  d('string', 'frames', None, 'the video of a single input: shot detection and render frames')
  d('bool', 'render', False, 'also write {name}.mp4 (over --frames, else a blank canvas)')
  d('integer', 'render_width', 640, 'rendered video width in pixels (downscaled, never up)')
  d('float', 'fps', 30.0, 'frame rate of renders without --frames')
  d('integer', 'batch', DEFAULT_BATCH, 'videos per compiled tracking batch')
  d('integer', 'capacity', None, 'initial tracklet slots per video (grows on demand)')
  d('string', 'pose_predictor', None, 'launch.train workdir of a PHALP pose predictor')
  d('bool', 'store_features', False, 'store appe/pose/loca per row in the pickle')
  flags.DEFINE_enum('mixed_sizes', 'group', ['group', 'fail'],
                    'files with different feature sizes: track per group, or fail', flag_values=fv)
  d('bool', 'progress', True, 'show a progress bar')
  d('string', 'benchmark', None, "run a benchmark instead: 'synthetic'")
  d('string', 'preset', 'all', "benchmark presets: easy, medium, hard, a comma list, or 'all'")
  d('integer', 'videos', 8, 'benchmark: scenes per preset')
  d('integer', 'seed', 0, 'benchmark: scenes from seeds (seed, i)')
  d('integer', 'num_frames', None, 'benchmark: frames per scene (default: the preset)')


def run_flags(fv) -> int:
  """Runs the command from parsed flags; returns the exit code (2 on a usage error)."""
  try:
    settings = settings_from(fv.config, fv.params, fv.capacity, fv.pose_predictor)
    if fv.benchmark:
      run_benchmark(fv.benchmark, fv.preset, fv.videos, fv.seed, fv.num_frames, fv.output,
                    fv.batch, settings, progress=fv.progress)
      return 0
    opts = TrackOptions(input=fv.input, output=fv.output, batch=fv.batch, frames=fv.frames,
                        render=fv.render, render_width=fv.render_width, fps=fv.fps,
                        store_features=fv.store_features, mixed_sizes=fv.mixed_sizes,
                        progress=fv.progress)
    summary = track_files(opts, settings)
  except UsageError as e:
    print(f'track: {e}', file=sys.stderr, flush=True)
    return 2
  return 0 if summary['tracked'] or not summary['inputs'] else 1


def main(argv: Sequence[str]) -> int:
  from absl import flags
  if len(argv) > 1:
    print(f'track: unexpected arguments {list(argv[1:])}', file=sys.stderr)
    return 2
  return run_flags(flags.FLAGS)


if __name__ == '__main__':
  from absl import app
  define_flags()
  app.run(main)
