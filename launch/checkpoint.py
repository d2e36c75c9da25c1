"""Checkpoints: the train state and the data iterator, saved together by one Orbax manager.

Layout of a workdir::

  WORKDIR/config.json            the resolved config of the run
  WORKDIR/checkpoints/<step>/    state/ (params, optimizer, step) + data/ (Grain iterator state)
  WORKDIR/metrics.jsonl          one JSON object per logged step
  WORKDIR/tensorboard/           event files

Saves are asynchronous and atomic (Orbax writes to a temporary directory and renames it when the
save is complete), so a run killed mid-save still has its previous checkpoint. Restores take the
target shardings, so a checkpoint written on one mesh loads onto any other mesh or device count.
A latest checkpoint that cannot be read is skipped with a warning in favour of the one before it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def saved_steps(workdir: str) -> list[int]:
  """Steps with a finished checkpoint directory in ``workdir`` (no Orbax manager needed)."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory)
                if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def make_manager(workdir: str, keep: int, async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      enable_async_checkpointing=async_save,
      create=True,
  )
  return ocp.CheckpointManager(epath.Path(checkpoint_dir(workdir)), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iterator: Any | None,
         force: bool = False) -> bool:
  """Queues an (async) save of state + iterator at ``step``; returns whether a save started."""
  items = {'state': ocp.args.StandardSave(state)}
  if data_iterator is not None:
    items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the *target* shardings, for restoring onto a new mesh."""
  return jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   data_iterator: Any | None) -> tuple[int, Any] | None:
  """Restores the newest readable checkpoint into ``abstract_state``'s shardings.

  Also restores ``data_iterator`` in place. Returns ``(step, state)``, or ``None`` when the
  workdir holds no checkpoint. Unreadable checkpoints are skipped, newest first, with a warning.
  """
  warn_incomplete_saves(str(manager.directory))
  steps = sorted(manager.all_steps(), reverse=True)
  unreadable = []
  for step in steps:
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint means "try the previous"
      logging.warning('checkpoint at step %d could not be restored (%s: %s); trying an older one',
                      step, type(e).__name__, e)
      print(f'WARNING: checkpoint at step {step} is unreadable ({type(e).__name__}: {e}); '
            f'falling back to an older checkpoint', flush=True)
      unreadable.append(step)
      continue
    _move_aside(manager, unreadable)
    return step, restored['state']
  if steps:
    raise RuntimeError(f'none of the checkpoints {steps} in {manager.directory} could be '
                       f'restored; move them aside to start from scratch')
  return None


def _move_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
  """Renames unreadable checkpoints to ``<step>.unreadable-<time>`` (kept for inspection, ignored
  by Orbax) so that the resumed run can save those steps again."""
  if not steps:
    return
  if jax.process_index() == 0:
    stamp = int(time.time())
    for step in steps:
      path = os.path.join(str(manager.directory), str(step))
      os.replace(path, f'{path}.unreadable-{stamp}')
      print(f'WARNING: moved the unreadable checkpoint aside to {path}.unreadable-{stamp}',
            flush=True)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('checkpoint_move_aside')
  manager.reload()


def write_config(workdir: str, config) -> None:
  """Writes the resolved config as JSON (atomically) so notebooks can rebuild the model."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, 'config.json')
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(tmp, path)


def read_config_dict(workdir: str) -> dict:
  with open(os.path.join(workdir, 'config.json')) as f:
    return json.load(f)


def load(workdir: str, step: int | None = None,
         items: tuple[str, ...] = ('params', 'model_state')) -> dict[str, Any]:
  """Config, parameters (and model state) of a run, as NumPy, without a mesh or an optimizer.

  Returns ``{'config': ConfigDict, 'step': int, 'params': ..., 'model_state': ...}`` (the last
  only when the run has one). ``step=None`` takes the newest checkpoint that can be read. Works on
  any device count: arrays come back as host NumPy arrays whatever mesh saved them.
  """
  import ml_collections
  import numpy as np

  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'workdir {workdir!r} does not exist')
  config_path = os.path.join(workdir, 'config.json')
  if not os.path.exists(config_path):
    raise FileNotFoundError(f'{config_path} is missing: {workdir!r} is not a training workdir')
  config = ml_collections.ConfigDict(read_config_dict(workdir))
  ckpt = checkpoint_dir(workdir)
  if not os.path.isdir(ckpt):
    raise FileNotFoundError(f'{ckpt} is missing: the run in {workdir!r} has saved no checkpoint')
  warn_incomplete_saves(ckpt)
  manager = ocp.CheckpointManager(
      epath.Path(ckpt), options=ocp.CheckpointManagerOptions(read_only=True),
      item_handlers={'state': ocp.PyTreeCheckpointHandler()})
  try:
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f'{ckpt} holds no checkpoint')
    if step is not None:
      if step not in steps:
        raise FileNotFoundError(f'{ckpt} has no checkpoint at step {step}; it has {sorted(steps)}')
      steps = [step]
    errors = []
    for s in steps:
      try:
        tree = manager.item_metadata(s)['state'].tree
        wanted = {k: tree[k] for k in items if k in tree}
        restore_args = jax.tree_util.tree_map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
        restored = manager.restore(s, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=wanted, restore_args=restore_args, partial_restore=True)))['state']
      except Exception as e:  # noqa: BLE001 - fall back to an older checkpoint, as training does
        errors.append(f'step {s}: {type(e).__name__}: {e}')
        logging.warning('checkpoint at step %d of %s is unreadable (%s); trying an older one',
                        s, workdir, e)
        continue
      return {'config': config, 'step': int(s), **restored}
    raise RuntimeError(f'no checkpoint in {ckpt} could be read:\n  ' + '\n  '.join(errors))
  finally:
    manager.close()


# Orbax writes a save to ``<step>.orbax-checkpoint-tmp-<n>`` and renames it to ``<step>`` when
# it is complete; a process killed mid-save leaves the temporary directory behind.
_TMP_MARKER = '.orbax-checkpoint-tmp'


def incomplete_saves(directory: str) -> list[str]:
  """Paths of the saves in a checkpoint directory that never completed (newest step first)."""
  if not os.path.isdir(directory):
    return []
  names = [n for n in os.listdir(directory) if _TMP_MARKER in n]
  def step_of(name):
    head = name.split(_TMP_MARKER)[0]
    return int(head) if head.isdigit() else -1
  return [os.path.join(directory, n) for n in sorted(names, key=step_of, reverse=True)]


def warn_incomplete_saves(directory: str) -> list[str]:
  """Warns about each incomplete save (Orbax ignores them, so a resume or a load falls back to
  the newest complete checkpoint); returns their paths."""
  paths = incomplete_saves(directory)
  if paths and jax.process_index() == 0:
    for path in paths:
      logging.warning('ignoring the incomplete checkpoint save %s (interrupted mid-save)', path)
      print(f'WARNING: ignoring the incomplete checkpoint save {path} (interrupted mid-save); '
            f'using the newest complete checkpoint', flush=True)
  return paths
