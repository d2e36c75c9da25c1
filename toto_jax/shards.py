"""The one on-disk format for discrete visual tokens: ArrayRecord shards of self-describing records.

Every job that produces token codes (the synthetic source, the video/image tokenization jobs) writes
through this module, and the Grain pipeline in :mod:`toto_jax.data` reads it back.

Record format (one record per clip or image), version 1::

    b'{"format": "toto-codes", "version": 1, "shape": [T, h, w], "dtype": "<u2",
       "kind": "video", "source": "kinetics", "label": -1}\\n' + raw little-endian uint16 codes

i.e. one line of UTF-8 JSON (no newline inside; ``json.dumps`` escapes them) terminated by
``\\n``, followed by exactly ``T*h*w*2`` bytes of C-ordered ``<u2`` codes. An image is ``T == 1``.
``label`` is an integer class or -1 when absent.

Shard files are named ``{prefix}-{index:05d}.array_record`` (no ``-of-N`` suffix: a rolling writer
does not know the shard count in advance, and resumable jobs append shards). Each file is written
to a ``*.tmp`` name in the same directory and then ``os.replace``-d into place, so a file under its
final name is always complete. This relies on a POSIX rename (local disk or NFS/FUSE mounts).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterable
from typing import Any

import numpy as np
from array_record.python import array_record_module

FORMAT = 'toto-codes'
VERSION = 1
KINDS = ('video', 'image')
SHARD_SUFFIX = '.array_record'
WRITER_OPTIONS = 'group_size:1'  # one record per chunk: cheap random access for Grain

_MAX_HEADER_BYTES = 4096


def encode_record(codes: Any, kind: str, source: str, label: int = -1) -> bytes:
  """Serializes one clip (``[T, h, w]``) or image (``[1, h, w]``) of codebook codes.

  Raises ValueError naming the offending field when a value cannot be stored faithfully.
  """
  arr = np.asarray(codes)
  if arr.ndim != 3:
    raise ValueError(f'codes: expected a 3-D array [frames, h, w], got shape {arr.shape}')
  if min(arr.shape) < 1:
    raise ValueError(f'codes: every dimension must be >= 1, got shape {arr.shape}')
  if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer)):
    raise ValueError(f'codes: expected an integer array, got dtype {arr.dtype}')
  lo, hi = int(arr.min()), int(arr.max())
  if lo < 0 or hi > 0xFFFF:
    raise ValueError(f'codes: values must fit uint16 [0, 65535], got range [{lo}, {hi}]')
  if kind not in KINDS:
    raise ValueError(f'kind: expected one of {KINDS}, got {kind!r}')
  if kind == 'image' and arr.shape[0] != 1:
    raise ValueError(f'codes: an image record must have frames == 1, got shape {arr.shape}')
  if not isinstance(source, str):
    raise ValueError(f'source: expected a str, got {type(source).__name__}')
  if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or int(label) < -1:
    raise ValueError(f'label: expected an int >= -1 (-1 = no label), got {label!r}')
  header = {
      'format': FORMAT, 'version': VERSION, 'shape': [int(d) for d in arr.shape],
      'dtype': '<u2', 'kind': kind, 'source': source, 'label': int(label),
  }
  head = json.dumps(header, separators=(',', ':')).encode('utf-8') + b'\n'
  if len(head) > _MAX_HEADER_BYTES:
    raise ValueError(f'source: too long for the record header ({len(source)} characters)')
  return head + np.ascontiguousarray(arr, dtype='<u2').tobytes()


def decode_record(data: bytes) -> dict[str, Any]:
  """Parses :func:`encode_record` output into ``dict(codes=uint16 [T,h,w], kind, source, label)``.

  Raises ValueError with the reason when the bytes are corrupt or truncated.
  """
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise ValueError(f'record: expected bytes, got {type(data).__name__}')
  data = bytes(data)
  nl = data.find(b'\n', 0, _MAX_HEADER_BYTES)
  if nl < 0:
    raise ValueError('record: corrupt or not a toto-codes record (no header line found)')
  try:
    header = json.loads(data[:nl].decode('utf-8'))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f'record: corrupt header ({e})') from None
  if not isinstance(header, dict) or header.get('format') != FORMAT:
    raise ValueError('record: corrupt or not a toto-codes record (bad format tag)')
  if header.get('version') != VERSION:
    raise ValueError(f'record: unsupported version {header.get("version")!r} (expected {VERSION})')
  shape = header.get('shape')
  if (not isinstance(shape, list) or len(shape) != 3
      or not all(isinstance(d, int) and d >= 1 for d in shape)):
    raise ValueError(f'record: corrupt header, bad shape {shape!r}')
  if header.get('dtype') != '<u2':
    raise ValueError(f'record: unsupported dtype {header.get("dtype")!r}')
  kind, source, label = header.get('kind'), header.get('source'), header.get('label')
  if kind not in KINDS or not isinstance(source, str) or not isinstance(label, int):
    raise ValueError('record: corrupt header, bad kind/source/label')
  payload = memoryview(data)[nl + 1:]
  expected = shape[0] * shape[1] * shape[2] * 2
  if len(payload) != expected:
    raise ValueError(
        f'record: truncated or corrupt payload, {len(payload)} bytes for shape {shape} '
        f'(expected {expected})')
  codes = np.frombuffer(payload, dtype='<u2').reshape(shape).astype(np.uint16)
  return {'codes': codes, 'kind': kind, 'source': source, 'label': label}


def shard_path(output_dir: str, prefix: str, index: int) -> str:
  """Final path of shard ``index``: ``{output_dir}/{prefix}-{index:05d}.array_record``."""
  return os.path.join(output_dir, f'{prefix}-{index:05d}{SHARD_SUFFIX}')


def _tmp_path(path: str) -> str:
  # Unique per writer, in the same directory (same filesystem, so os.replace is atomic).
  return f'{path}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp'


def _check_record(record: Any) -> bytes:
  if not isinstance(record, (bytes, bytearray)):
    raise TypeError(f'records must be bytes (see encode_record), got {type(record).__name__}')
  return bytes(record)


def write_shard(path: str, records: Iterable[bytes]) -> int:
  """Writes ``records`` to the ArrayRecord file ``path`` atomically; returns the record count.

  Data goes to a temporary file next to ``path`` that is renamed over ``path`` only after the
  writer closed successfully; on any error the temporary file is removed and the error re-raised,
  so ``path`` is either absent/unchanged or complete.
  """
  tmp = _tmp_path(path)
  writer = array_record_module.ArrayRecordWriter(tmp, WRITER_OPTIONS)
  n = 0
  try:
    for record in records:
      writer.write(_check_record(record))
      n += 1
    writer.close()
    os.replace(tmp, path)
  except BaseException:
    try:
      writer.close()
    except Exception:  # pylint: disable=broad-except
      pass
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return n


class ShardWriter:
  """Streams records into rolling shards of ``records_per_shard``, each finalized atomically.

  Usage::

      with ShardWriter(out_dir, 'kinetics', 1000) as w:
        for clip in clips:
          w.write(encode_record(clip, 'video', 'kinetics'))
      paths = w.paths        # finished shards, in order

  ``start_index`` lets a resumed job continue numbering after its finished shards. If the
  ``with`` body raises, the shard in progress is discarded (finished ones stay).
  """

  def __init__(self, output_dir: str, prefix: str, records_per_shard: int, *,
               start_index: int = 0):
    if records_per_shard < 1:
      raise ValueError(f'records_per_shard must be >= 1, got {records_per_shard}')
    if not prefix or os.sep in prefix:
      raise ValueError(f'prefix must be a non-empty file name part, got {prefix!r}')
    os.makedirs(output_dir, exist_ok=True)
    self.output_dir = output_dir
    self.prefix = prefix
    self.records_per_shard = records_per_shard
    self.paths: list[str] = []
    self._index = start_index
    self._writer = None
    self._tmp = ''
    self._count = 0
    self._closed = False

  def write(self, record: bytes) -> None:
    """Appends one encoded record, rolling to a new shard when the current one is full."""
    if self._closed:
      raise ValueError('ShardWriter is closed')
    record = _check_record(record)
    if self._writer is None:
      self._tmp = _tmp_path(shard_path(self.output_dir, self.prefix, self._index))
      self._writer = array_record_module.ArrayRecordWriter(self._tmp, WRITER_OPTIONS)
      self._count = 0
    self._writer.write(record)
    self._count += 1
    if self._count >= self.records_per_shard:
      self._finish()

  def _finish(self) -> None:
    final = shard_path(self.output_dir, self.prefix, self._index)
    self._writer.close()
    self._writer = None
    os.replace(self._tmp, final)
    self.paths.append(final)
    self._index += 1

  def abort(self) -> None:
    """Drops the shard in progress (its temporary file); finished shards are kept."""
    if self._writer is not None:
      try:
        self._writer.close()
      except Exception:  # pylint: disable=broad-except
        pass
      self._writer = None
      if os.path.exists(self._tmp):
        os.remove(self._tmp)
    self._closed = True

  def close(self) -> list[str]:
    """Finalizes the last (possibly partial) shard and returns all finished paths."""
    if not self._closed:
      if self._writer is not None and self._count > 0:
        self._finish()
      self._closed = True
    return list(self.paths)

  def __enter__(self) -> ShardWriter:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()


def finished_shards(output_dir: str, prefix: str) -> list[str]:
  """Complete shards ``{prefix}-NNNNN.array_record`` in ``output_dir``, sorted by index.

  Temporary files (``*.tmp``) of crashed or in-flight writers are ignored.
  """
  if not os.path.isdir(output_dir):
    return []
  pat = re.compile(re.escape(prefix) + r'-(\d{5,})' + re.escape(SHARD_SUFFIX))
  found = []
  for name in os.listdir(output_dir):
    m = pat.fullmatch(name)
    if m:
      found.append((int(m.group(1)), os.path.join(output_dir, name)))
  return [p for _, p in sorted(found)]


def read_records(paths: Iterable[str]) -> Iterable[dict[str, Any]]:
  """Every record of the shard files ``paths``, in order, decoded by :func:`decode_record`."""
  for path in paths:
    reader = array_record_module.ArrayRecordReader(path)
    try:
      for data in reader.read_all():
        yield decode_record(data)
    finally:
      reader.close()
