"""Grain input pipeline for Toto: token shards (or synthetic clips) -> fixed-length id sequences.

Vocabulary (project decision): id 0 pad, 1 video start, 2 end, 3 image start; codebook code ``c``
is id ``c + 4``. One sequence of ``T = data.frames`` frames of ``h x w`` tokens is::

    [start] + codes(frame_1).ravel() + ... + codes(frame_T).ravel() + [END]   (T*h*w + 2 ids)

with ``start`` = VIDEO_START for a clip and IMAGE_START for ``T`` independent images (``T``
different image records stacked as if they were frames). The model consumes ``tokens[:, :-1]``
and predicts ``tokens[:, 1:]``.

Config (``data``, an ``ml_collections.ConfigDict``):

* ``frames``, ``frame_h``, ``frame_w``, ``codebook_size`` (required ints).
* ``sources``: name -> ``{pattern, weight, kind}``. ``pattern`` is a glob of ``.array_record``
  shards (see :mod:`toto_jax.shards`; ``*.tmp`` files are ignored) or the literal
  ``'synthetic'`` (in-memory :class:`~toto_jax.synthetic.SyntheticTokenClips`, kind 'video').
  ``weight`` > 0 is the source's share of sequences; ``kind`` is 'video' or 'image'. Optional
  ``eval_pattern``: a glob of held-out shards for this source (then ``eval_records`` does not
  apply to it).
* ``synthetic_clips`` (training clips of a synthetic source), optional ``synthetic_seed``
  (default 0; the content stream, independent of the shuffle ``seed``).
* ``eval_records`` (optional, default 0): per source, the first ``eval_records`` records (in
  sorted file order) are held out of training and form the eval set. A synthetic source's eval
  set is ``eval_records`` clips (or as many as one eval pass needs, when 0) with indices after the
  training clips, so it is always disjoint. A file source with neither ``eval_records`` nor
  ``eval_pattern`` evaluates on (part of) its training records, with a warning.
* ``worker_count`` (0 = in-process; else Grain worker processes), optional ``read_threads``
  (default 16) and ``read_buffer_size`` (default 500) for ``grain.ReadOptions``.

Clips longer than ``T`` frames contribute one window of ``T`` consecutive frames per visit: a
random start for training (seeded per element, so deterministic and different each epoch), the
first ``T`` frames for eval. Clips shorter than ``T`` are skipped (with a logged warning) rather
than padded, so every training sequence is real video; a source of only short clips makes Grain
raise once >99% of 1000 consecutive elements were skipped.

Determinism and resumption: everything is a function of ``seed`` and the process index; the
training iterator's ``get_state()`` / ``set_state()`` (or ``grain.checkpoint.CheckpointSave`` /
``CheckpointRestore`` inside an Orbax checkpoint) resume it exactly.
"""

from __future__ import annotations

import bisect
import dataclasses
import glob
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import grain
import ml_collections
import numpy as np

from toto_jax import shards
from toto_jax import synthetic

PAD, VIDEO_START, END, IMAGE_START, NUM_RESERVED = 0, 1, 2, 3, 4
SYNTHETIC = 'synthetic'

_log = logging.getLogger(__name__)
# Grain drops None elements (skipped short clips); fail instead of spinning on a useless source.
_SKIP_RAISE_RATIO = 0.99


# ----------------------------------------------------------------------------- layout helpers


def sequence_length(data_cfg: ml_collections.ConfigDict) -> int:
  """Ids per sequence: ``frames * frame_h * frame_w + 2`` (start and end markers)."""
  geo = _geometry(data_cfg)
  return geo.frames * geo.h * geo.w + 2


def vocab_size(data_cfg: ml_collections.ConfigDict) -> int:
  """Model vocabulary: the reserved ids plus the codebook."""
  return NUM_RESERVED + _geometry(data_cfg).codebook_size


def codes_to_tokens(codes: np.ndarray, kind: str = 'video') -> np.ndarray:
  """``[T, h, w]`` codebook codes -> int32 ``[T*h*w + 2]`` sequence with start/end markers."""
  codes = np.asarray(codes)
  out = np.empty(codes.size + 2, np.int32)
  out[0] = VIDEO_START if kind == 'video' else IMAGE_START
  out[1:-1] = codes.reshape(-1).astype(np.int32) + NUM_RESERVED
  out[-1] = END
  return out


def tokens_to_codes(tokens: np.ndarray, frames: int, h: int, w: int) -> np.ndarray:
  """Inverse of :func:`codes_to_tokens` for the frame part: ``[..., T*h*w+2] -> [..., T, h, w]``.

  Reserved ids inside the frame part (a model may emit them) map to code -1.
  """
  tokens = np.asarray(tokens)
  body = tokens[..., 1:1 + frames * h * w].astype(np.int32) - NUM_RESERVED
  body = np.where(body < 0, -1, body)
  return body.reshape(tokens.shape[:-1] + (frames, h, w))


# ----------------------------------------------------------------------------- config validation


@dataclasses.dataclass(frozen=True)
class _Geometry:
  frames: int
  h: int
  w: int
  codebook_size: int


@dataclasses.dataclass(frozen=True)
class _SourceSpec:
  name: str
  kind: str
  weight: float
  synthetic: bool
  files: tuple[str, ...] = ()
  counts: tuple[int, ...] = ()
  eval_files: tuple[str, ...] = ()
  eval_counts: tuple[int, ...] = ()


def _is_int(v: Any) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _int_field(cfg: ml_collections.ConfigDict, name: str, lo: int, default: Any = None,
               hi: int | None = None) -> int:
  if name not in cfg or cfg[name] is None:
    if default is None:
      raise ValueError(f'data.{name} is required')
    return default
  v = cfg[name]
  if not _is_int(v) or v < lo or (hi is not None and v > hi):
    rng = f'>= {lo}' if hi is None else f'in [{lo}, {hi}]'
    raise ValueError(f'data.{name} must be an int {rng}, got {v!r}')
  return int(v)


def _geometry(data_cfg: ml_collections.ConfigDict) -> _Geometry:
  return _Geometry(
      frames=_int_field(data_cfg, 'frames', 1),
      h=_int_field(data_cfg, 'frame_h', 1),
      w=_int_field(data_cfg, 'frame_w', 1),
      codebook_size=_int_field(data_cfg, 'codebook_size', 1, hi=0x10000),
  )


def _glob(pattern: str) -> tuple[str, ...]:
  return tuple(sorted(p for p in glob.glob(pattern) if not p.endswith('.tmp')
                      and os.path.isfile(p)))


def _record_counts(files: Sequence[str], where: str) -> tuple[int, ...]:
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  counts = []
  for f in files:
    try:
      reader = array_record_module.ArrayRecordReader(f)
    except Exception as e:  # array_record raises RuntimeError/ValueError on bad files
      raise ValueError(f'{where}: cannot open {f!r} as ArrayRecord ({e})') from None
    counts.append(int(reader.num_records()))
    reader.close()
  return tuple(counts)


def _source_specs(data_cfg: ml_collections.ConfigDict, geo: _Geometry) -> list[_SourceSpec]:
  """Validates ``data.sources`` and resolves file lists; sorted by name for determinism."""
  sources = data_cfg.get('sources', None)
  if sources is None or not hasattr(sources, 'keys') or len(sources.keys()) == 0:
    raise ValueError('data.sources must name at least one source')
  specs = []
  for name in sorted(sources.keys()):
    src = sources[name]
    where = f'data.sources.{name}'
    if src is None or not hasattr(src, 'get'):
      raise ValueError(f'{where} must be a ConfigDict with pattern/weight/kind')
    pattern = src.get('pattern', None)
    if not isinstance(pattern, str) or not pattern:
      raise ValueError(f'{where}.pattern must be a non-empty str (a glob or {SYNTHETIC!r})')
    weight = src.get('weight', None)
    if (isinstance(weight, bool) or not isinstance(weight, (int, float, np.number))
        or not math.isfinite(weight) or weight <= 0):
      raise ValueError(f'{where}.weight must be > 0, got {weight!r}')
    kind = src.get('kind', None)
    if kind not in shards.KINDS:
      raise ValueError(f'{where}.kind must be one of {shards.KINDS}, got {kind!r}')
    if pattern == SYNTHETIC:
      if kind != 'video':
        raise ValueError(f"{where}.kind must be 'video' for pattern {SYNTHETIC!r}, got {kind!r}")
      _int_field(data_cfg, 'synthetic_clips', 1)
      if geo.codebook_size < synthetic.MIN_CODEBOOK:
        raise ValueError(f'data.codebook_size must be >= {synthetic.MIN_CODEBOOK} for a synthetic '
                         f'source, got {geo.codebook_size}')
      specs.append(_SourceSpec(name, kind, float(weight), True))
      continue
    files = _glob(pattern)
    if not files:
      raise ValueError(f'{where}.pattern: no files match {pattern!r}')
    counts = _record_counts(files, f'{where}.pattern')
    if sum(counts) == 0:
      raise ValueError(f'{where}.pattern: the {len(files)} files matching {pattern!r} are empty')
    eval_files, eval_counts = (), ()
    eval_pattern = src.get('eval_pattern', None)
    if eval_pattern:
      if not isinstance(eval_pattern, str):
        raise ValueError(f'{where}.eval_pattern must be a str glob, got {eval_pattern!r}')
      eval_files = _glob(eval_pattern)
      if not eval_files:
        raise ValueError(f'{where}.eval_pattern: no files match {eval_pattern!r}')
      eval_counts = _record_counts(eval_files, f'{where}.eval_pattern')
    spec = _SourceSpec(name, kind, float(weight), False, files, counts, eval_files, eval_counts)
    _check_first_record(spec, geo)
    specs.append(spec)
  return specs


def _check_first_record(spec: _SourceSpec, geo: _Geometry) -> None:
  """Fails fast on the common misconfigurations (wrong frame size / kind) at build time."""
  first = next(i for i, c in enumerate(spec.counts) if c > 0)
  ctx = _SourceCtx(spec, geo)
  ds = grain.sources.ArrayRecordDataSource([spec.files[first]])
  ctx.decode((sum(spec.counts[:first]), ds[0]))


def _validate_common(data_cfg: ml_collections.ConfigDict, process_index: int, process_count: int,
                     batch_size: int) -> tuple[_Geometry, list[_SourceSpec]]:
  if data_cfg is None:
    raise ValueError('data config is missing')
  for name, v, lo in (('batch_size', batch_size, 1), ('process_count', process_count, 1),
                      ('process_index', process_index, 0)):
    if not _is_int(v) or v < lo:
      raise ValueError(f'{name} must be an int >= {lo}, got {v!r}')
  if process_index >= process_count:
    raise ValueError(f'process_index {process_index} must be < process_count {process_count}')
  geo = _geometry(data_cfg)
  _int_field(data_cfg, 'worker_count', 0, default=0)
  _int_field(data_cfg, 'eval_records', 0, default=0)
  _int_field(data_cfg, 'synthetic_seed', 0, default=0)
  _int_field(data_cfg, 'read_threads', 0, default=16)
  _int_field(data_cfg, 'read_buffer_size', 1, default=500)
  return geo, _source_specs(data_cfg, geo)


# ----------------------------------------------------------------------------- element transforms


def _with_index(index: int, element: Any) -> tuple[int, Any]:
  """Pairs each record with its index in the source (for error messages naming the file)."""
  return index, element


class _SourceCtx:
  """Decodes and validates one source's records; picklable for Grain worker processes."""

  def __init__(self, spec: _SourceSpec, geo: _Geometry, files: Sequence[str] | None = None,
               counts: Sequence[int] | None = None):
    self.spec, self.geo = spec, geo
    self.files = tuple(spec.files if files is None else files)
    counts = spec.counts if counts is None else counts
    self.ends = list(np.cumsum(counts)) if counts else []
    self.warned_short = False

  def where(self, index: int) -> str:
    if self.spec.synthetic or not self.files:
      return f'data.sources.{self.spec.name}: record {index}'
    f = min(bisect.bisect_right(self.ends, index), len(self.files) - 1)
    local = index - (int(self.ends[f - 1]) if f else 0)
    return f'data.sources.{self.spec.name}: record {local} of file {self.files[f]!r}'

  def decode(self, element: tuple[int, Any]) -> dict[str, Any]:
    index, raw = element
    if isinstance(raw, dict):
      rec = raw
    else:
      try:
        rec = shards.decode_record(raw)
      except ValueError as e:
        raise ValueError(f'{self.where(index)}: {e}') from None
    codes, geo = rec['codes'], self.geo
    if rec['kind'] != self.spec.kind:
      raise ValueError(f'{self.where(index)} has kind {rec["kind"]!r} but the source is declared '
                       f'data.sources.{self.spec.name}.kind = {self.spec.kind!r}')
    if codes.shape[1:] != (geo.h, geo.w):
      raise ValueError(
          f'{self.where(index)} has frame size {codes.shape[1]}x{codes.shape[2]}, expected '
          f'data.frame_h x data.frame_w = {geo.h}x{geo.w}')
    if rec['kind'] == 'image' and codes.shape[0] != 1:
      raise ValueError(f'{self.where(index)} is an image record with {codes.shape[0]} frames')
    if int(codes.max()) >= geo.codebook_size:
      raise ValueError(f'{self.where(index)} has code {int(codes.max())} >= '
                       f'data.codebook_size = {geo.codebook_size}')
    return rec


class _VideoToSequence:
  """Record -> ``{'tokens'}`` of one ``T``-frame window (random start if given an rng)."""

  def __init__(self, ctx: _SourceCtx):
    self.ctx = ctx

  def __call__(self, element: tuple[int, Any], rng: np.random.Generator | None = None):
    codes = self.ctx.decode(element)['codes']
    t, n = self.ctx.geo.frames, codes.shape[0]
    if n < t:
      if not self.ctx.warned_short:
        self.ctx.warned_short = True
        _log.warning('%s has %d frames < data.frames = %d; skipping such clips',
                     self.ctx.where(element[0]), n, t)
      return None
    start = int(rng.integers(0, n - t + 1)) if rng is not None and n > t else 0
    return {'tokens': codes_to_tokens(codes[start:start + t], 'video')}


class _ImagesToSequence:
  """``T`` image records -> ``{'tokens'}`` of one image sequence (IMAGE_START marker)."""

  def __init__(self, ctx: _SourceCtx):
    self.ctx = ctx

  def __call__(self, elements: Sequence[tuple[int, Any]]):
    codes = np.concatenate([self.ctx.decode(e)['codes'] for e in elements], axis=0)
    return {'tokens': codes_to_tokens(codes, 'image')}


# ----------------------------------------------------------------------------- pipelines


def derive_seed(*parts: int) -> int:
  """A uint32 seed from a tuple of ints (independent streams per source/purpose)."""
  return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


_SALT_SHUFFLE, _SALT_WINDOW = 1, 2


def shard_for_process(ds: grain.MapDataset, where: str, process_index: int, process_count: int,
           need: int) -> grain.MapDataset:
  n = len(ds)
  ds = ds[process_index::process_count]
  if len(ds) < need:
    raise ValueError(f'{where}: {n} records cannot give each of process_count={process_count} '
                     f'processes the {need} record(s) one sequence needs')
  return ds


def ensure_absl_flags_parsed() -> None:
  """Grain's worker processes read absl flags; outside ``app.run`` (tests, notebooks) use defaults."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _mix_proportions(weights: Sequence[float]) -> list[int]:
  """Integer proportions (smallest = 100) that Grain's mix uses exactly.

  ``MapDataset.mix`` truncates ``w * 100 / min(w)`` to int, so 0.3 vs 0.1 could become 299:100;
  rounding here first makes the interleaving follow the configured weights to 1% of the smallest.
  """
  lo = min(weights)
  return [max(1, round(w / lo * 100)) for w in weights]


def _finish(datasets: list[grain.MapDataset], specs: list[_SourceSpec], data_cfg,
            batch_size: int, workers: int) -> grain.IterDataset:
  ds = datasets[0] if len(datasets) == 1 else grain.MapDataset.mix(
      datasets, _mix_proportions([s.weight for s in specs]))
  read = grain.ReadOptions(num_threads=_int_field(data_cfg, 'read_threads', 0, default=16),
                           prefetch_buffer_size=_int_field(data_cfg, 'read_buffer_size', 1,
                                                           default=500))
  it = ds.to_iter_dataset(read)
  it = grain.experimental.WithOptionsIterDataset(
      it, grain.experimental.DatasetOptions(filter_raise_threshold_ratio=_SKIP_RAISE_RATIO))
  it = it.batch(batch_size, drop_remainder=True)
  if workers > 0:
    ensure_absl_flags_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return it


def validate_data_config(data_cfg: ml_collections.ConfigDict) -> None:
  """Raises ``ValueError`` naming the ``data.*`` field for a config no pipeline can be built from."""
  _validate_common(data_cfg, process_index=0, process_count=1, batch_size=1)


def build_train_dataset(data_cfg: ml_collections.ConfigDict, *, seed: int, process_index: int,
                        process_count: int, batch_size: int) -> grain.IterDataset:
  """Infinite, shuffled, mixed training stream of ``{'tokens': int32 [batch_size, L]}``.

  ``batch_size`` is per process; each process reads a disjoint ``process_index::process_count``
  slice of every source. Iterate with ``it = iter(ds)``; ``it.get_state()`` / ``it.set_state()``
  resume exactly (same seed, process layout and config).
  """
  if not _is_int(seed) or seed < 0:
    raise ValueError(f'seed must be an int >= 0, got {seed!r}')
  geo, specs = _validate_common(data_cfg, process_index, process_count, batch_size)
  eval_records = _int_field(data_cfg, 'eval_records', 0, default=0)
  datasets = []
  for k, spec in enumerate(specs):
    where = f'data.sources.{spec.name}'
    ctx = _SourceCtx(spec, geo)
    if spec.synthetic:
      n_train = _int_field(data_cfg, 'synthetic_clips', 1)
      src = synthetic.SyntheticTokenClips(n_train, geo.frames, geo.h, geo.w, geo.codebook_size,
                                          seed=_int_field(data_cfg, 'synthetic_seed', 0, 0))
      ds = grain.MapDataset.source(src).map_with_index(_with_index)
    else:
      ds = grain.MapDataset.source(grain.sources.ArrayRecordDataSource(list(spec.files)))
      ds = ds.map_with_index(_with_index)
      if eval_records and not spec.eval_files:
        if eval_records >= len(ds):
          raise ValueError(f'data.eval_records = {eval_records} leaves no training records in '
                           f'{where} ({len(ds)} records)')
        ds = ds[eval_records:]
    need = geo.frames if spec.kind == 'image' else 1
    ds = shard_for_process(ds, where, process_index, process_count, need)
    ds = ds.shuffle(seed=derive_seed(seed, k, _SALT_SHUFFLE))
    if spec.kind == 'image':
      ds = ds.batch(geo.frames, drop_remainder=True, batch_fn=list)
      ds = ds.repeat(None).map(_ImagesToSequence(ctx))
    else:
      ds = ds.repeat(None).random_map(_VideoToSequence(ctx),
                                      seed=derive_seed(seed, k, _SALT_WINDOW))
    datasets.append(ds)
  return _finish(datasets, specs, data_cfg, batch_size,
                 _int_field(data_cfg, 'worker_count', 0, default=0))


def build_eval_dataset(data_cfg: ml_collections.ConfigDict, *, process_index: int,
                       process_count: int, batch_size: int,
                       num_batches: int) -> list[dict[str, np.ndarray]]:
  """``num_batches`` deterministic eval batches ``{'tokens': int32 [batch_size, L]}``.

  Held-out records (see the module docstring), no shuffling, first-``T``-frame windows, sources
  mixed by weight; a small eval set is cycled to fill ``num_batches``. Always in-process.
  """
  if not _is_int(num_batches) or num_batches < 1:
    raise ValueError(f'num_batches must be an int >= 1, got {num_batches!r}')
  geo, specs = _validate_common(data_cfg, process_index, process_count, batch_size)
  eval_records = _int_field(data_cfg, 'eval_records', 0, default=0)
  datasets = []
  for spec in specs:
    where = f'data.sources.{spec.name} (eval)'
    if spec.synthetic:
      n_train = _int_field(data_cfg, 'synthetic_clips', 1)
      n_eval = eval_records or num_batches * batch_size * process_count
      src = synthetic.SyntheticTokenClips(n_eval, geo.frames, geo.h, geo.w, geo.codebook_size,
                                          seed=_int_field(data_cfg, 'synthetic_seed', 0, 0),
                                          start_index=n_train)
      ctx = _SourceCtx(spec, geo)
      ds = grain.MapDataset.source(src).map_with_index(_with_index)
    elif spec.eval_files:
      ctx = _SourceCtx(spec, geo, spec.eval_files, spec.eval_counts)
      src = grain.sources.ArrayRecordDataSource(list(spec.eval_files))
      ds = grain.MapDataset.source(src).map_with_index(_with_index)
    else:
      ctx = _SourceCtx(spec, geo)
      src = grain.sources.ArrayRecordDataSource(list(spec.files))
      ds = grain.MapDataset.source(src).map_with_index(_with_index)
      if eval_records:
        ds = ds[:eval_records]
      else:
        _log.warning('data.sources.%s has no held-out records (set data.eval_records or '
                     'data.sources.%s.eval_pattern); evaluating on training records',
                     spec.name, spec.name)
    need = geo.frames if spec.kind == 'image' else 1
    ds = shard_for_process(ds, where, process_index, process_count, need)
    if spec.kind == 'image':
      ds = ds.batch(geo.frames, drop_remainder=True, batch_fn=list)
      ds = ds.repeat(None, reseed_each_epoch=False).map(_ImagesToSequence(ctx))
    else:
      ds = ds.repeat(None, reseed_each_epoch=False).map(_VideoToSequence(ctx))
    datasets.append(ds)
  it = iter(_finish(datasets, specs, data_cfg, batch_size, workers=0))
  try:
    return [next(it) for _ in range(num_batches)]
  finally:
    it.close()
