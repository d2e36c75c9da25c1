"""Run logging: JSON lines, TensorBoard and a live progress bar, written by process 0 only."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Mapping

import jax

try:
  from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - tqdm is a declared dependency
  tqdm = None


def _scalar(v):
  v = float(v)
  return v if math.isfinite(v) else str(v)


class MetricsLogger:
  """Appends ``{"step": ..., name: value}`` lines to ``WORKDIR/metrics.jsonl`` and mirrors them to
  TensorBoard; drives a tqdm bar showing step, loss, tokens/s, MFU and ETA.

  On resume at ``start_step`` the records of steps after it (written before a crash, and about to
  be redone) are dropped first, so the file holds each step once; ``latest`` then holds the last
  logged value of every metric up to ``start_step``.
  """

  def __init__(self, workdir: str, total_steps: int, start_step: int, *, tensorboard: bool = True,
               progress_bar: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._writer = None
    self._bar = None
    self.latest: dict = {}
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    for record in _truncate_after(self.path, start_step):
      self.latest.update({k: v for k, v in record.items() if k not in ('step', 'time')})
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter
        self._writer = SummaryWriter(os.path.join(workdir, 'tensorboard'))
      except ImportError:  # pragma: no cover
        self._writer = None
    if progress_bar and tqdm is not None:
      self._bar = tqdm(total=total_steps, initial=start_step, desc='train', unit='step',
                       dynamic_ncols=True, smoothing=0.1)
    self._last_time = time.time()

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), 'time': time.time()}
    record.update({k: _scalar(v) for k, v in metrics.items()})
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    if self._writer is not None:
      for k, v in metrics.items():
        if isinstance(v, (int, float)) and math.isfinite(float(v)):
          self._writer.add_scalar(k, float(v), step)
      self._writer.flush()

  def progress(self, step: int, metrics: Mapping[str, float] | None = None) -> None:
    if self._bar is None:
      return
    self._bar.n = step
    if metrics:
      shown = {}
      for key, label, fmt in (('train/loss', 'loss', '.4f'), ('perf/tokens_per_s', 'tok/s', '.0f'),
                              ('perf/mfu', 'MFU', '.1%'), ('eval/loss', 'eval', '.4f')):
        if key in metrics:
          shown[label] = format(float(metrics[key]), fmt)
      self._bar.set_postfix(shown, refresh=False)
    self._bar.refresh()

  def message(self, text: str) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(text)
    else:
      print(text, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    if self._writer is not None:
      self._writer.close()


def _truncate_after(path: str, step: int) -> list[dict]:
  """Atomically rewrites ``path`` without the records of steps after ``step`` (and torn lines);
  returns the records kept."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.readlines()
  keep, records = [], []
  for line in lines:
    try:
      record = json.loads(line)
      if record['step'] <= step:
        keep.append(line if line.endswith('\n') else line + '\n')
        records.append(record)
    except (json.JSONDecodeError, KeyError, TypeError):
      continue
  if len(keep) == len(lines):
    return records
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.writelines(keep)
  os.replace(tmp, path)
  return records


def read_metrics(workdir: str) -> list[dict]:
  """All records of ``WORKDIR/metrics.jsonl`` (a torn last line from a killed run is skipped)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return out
