r"""Failure drills: kill a real training run, break its checkpoints, move it to other devices, and
check it still ends where an uninterrupted run ends.

  python -m launch.drill --config configs/toto.py:tiny --workdir /tmp/drill --kills 5 \
      [--seed S] [--signals kill,term] [--drill kills|half_written|devices] [-- OVERRIDES...]

Every drill first trains the uninterrupted reference (``WORKDIR/reference``, reused when the same
command already finished it), then the drilled run in ``WORKDIR/<drill>``, each a
``python -m launch.train`` child process, and compares the final train states leaf by leaf:

* ``kills``: the run is interrupted ``--kills`` times at random moments (drawn from ``--seed``: a
  step in what is left, spread so that every kill finds a run, plus a jitter of up to two step
  times, so signals land inside steps, during asynchronous saves and during compilation),
  signals cycling through ``--signals``, and rerun after each until it finishes. Exact equality
  is expected on CPU (same devices, same order of sums).
* ``half_written``: the reference's newest checkpoint is turned into what a kill during an Orbax
  save leaves (``--how tmp``: its temporary ``<step>.orbax-checkpoint-tmp-*`` directory with a
  truncated array file; ``--how truncate``: the finished step with truncated array files); the
  rerun must warn, resume from the previous checkpoint and end equal to the reference.
* ``devices``: the run starts on ``--devices`` CPU devices, is stopped at a random moment, and
  finishes on ``--resume_devices``; equal within ``--rtol``/``--atol`` (sums over other shards
  round differently).

Prints one JSON summary and exits 1 when the states differ (2 on a usage error). ``--devices N``
forces N simulated CPU devices in the children (``0`` leaves the environment's accelerators).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Sequence

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIGNALS = {'kill': signal.SIGKILL, 'term': signal.SIGTERM}
READY = '[train] task='          # printed once the state is restored or initialised
_DEVICE_FLAG = '--xla_force_host_platform_device_count'


class DrillError(RuntimeError):
  """A child run failed in a way the drill does not expect (not a state mismatch)."""


# ------------------------------------------------------------------------------------------------
# Child processes
# ------------------------------------------------------------------------------------------------

def child_env(cpu_devices: int) -> dict[str, str]:
  """The environment of a training child: ``cpu_devices`` simulated CPU devices (0: unchanged)."""
  env = dict(os.environ)
  env['PYTHONUNBUFFERED'] = '1'
  env['PYTHONPATH'] = REPO_ROOT + os.pathsep + env.get('PYTHONPATH', '')
  if cpu_devices > 0:
    flags = [f for f in env.get('XLA_FLAGS', '').split() if not f.startswith(_DEVICE_FLAG)]
    env['XLA_FLAGS'] = ' '.join(flags + [f'{_DEVICE_FLAG}={cpu_devices}'])
    env['JAX_PLATFORMS'] = 'cpu'
  return env


def train_command(config: str, workdir: str, overrides: Sequence[str]) -> list[str]:
  return [sys.executable, '-m', 'launch.train', '--config', config, '--workdir', workdir,
          *overrides]


def _read(path: str) -> str:
  with open(path, errors='replace') as f:
    return f.read()


def _logged_steps(workdir: str) -> list[int]:
  from launch import metrics as metrics_lib
  return sorted({int(r['step']) for r in metrics_lib.read_metrics(workdir) if 'train/loss' in r})


def _resumed_step(text: str) -> int | None:
  m = re.search(r'resumed at step (\d+)', text)
  return int(m.group(1)) if m else (0 if 'fresh start' in text else None)


def run_session(cmd: list[str], env: dict, workdir: str, log_path: str, *,
                plan: dict[str, Any] | None = None, timeout_s: float = 900.0) -> dict[str, Any]:
  """Runs one training child to its end, or interrupts it as ``plan`` says.

  ``plan = {'signal': SIGKILL, 'fraction': u, 'jitter_s': j, 'total_steps': n}``: once the child
  reports its state ready (at step ``r``), wait until it has logged step
  ``r + floor(u * (n - r))`` (at once when that is ``r``: the kill lands in compilation or the
  first steps), then ``j`` seconds more, then send the signal. Returns what happened: exit code,
  where it resumed, the signal, the step logged when it was sent, where a SIGTERM stopped it, and
  ``missed`` when the child finished first.
  """
  start = time.monotonic()
  with open(log_path, 'w') as log:
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
  out: dict[str, Any] = {'log': log_path}
  ready_at = resumed = target = fire_at = None
  try:
    deadline = start + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
      time.sleep(0.003)
      if plan is None:
        continue
      now = time.monotonic()
      if ready_at is None:
        text = _read(log_path)
        if READY in text:
          ready_at = now
          resumed = _resumed_step(text) or 0
          total = plan['total_steps']
          target = min(resumed + int(plan['fraction'] * (total - resumed)), total - 1)
          out['target_step'] = target
        continue
      if fire_at is None:
        logged = _logged_steps(workdir) if target > resumed else [resumed]
        if logged and logged[-1] >= target:
          fire_at = now + plan['jitter_s']
        continue
      if now >= fire_at:
        logged = _logged_steps(workdir)
        proc.send_signal(plan['signal'])
        out.update(signal=plan['signal'].name, delay_s=round(now - ready_at, 3),
                   last_logged_step=logged[-1] if logged else 0)
        plan = None
    if proc.poll() is None:
      proc.kill()
      proc.wait()
      raise DrillError(f'{" ".join(cmd)} ran past {timeout_s} s; log: {log_path}')
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  text = _read(log_path)
  out['rc'] = proc.returncode
  out['wall_s'] = round(time.monotonic() - start, 3)
  out['resumed_at'] = _resumed_step(text)
  m = re.search(r'stopping at step (\d+) \(SIGTERM\)', text)
  if m:
    out['stopped_at'] = int(m.group(1))
  m = re.search(r'\[train\] done at step (\d+)/(\d+)', text)
  out['finished'] = bool(m) and m.group(1) == m.group(2)  # a stopped run prints 'stopped at'
  if plan is not None or ('signal' in out and out['finished']):
    out['missed'] = True  # the child finished before the signal was due or landed
  expected = {0} if 'signal' not in out else {0, -signal.SIGKILL, -signal.SIGTERM}
  if out['rc'] not in expected:
    raise DrillError(f'{" ".join(cmd)} exited {out["rc"]}:\n{text[-3000:]}')
  out['warnings'] = [line for line in text.splitlines() if line.startswith('WARNING:')]
  return out


# ------------------------------------------------------------------------------------------------
# Comparing runs
# ------------------------------------------------------------------------------------------------

STATE_ITEMS = ('params', 'opt_state', 'model_state')


def compare_states(reference: str, drilled: str, rtol: float = 0.0, atol: float = 0.0
                   ) -> dict[str, Any]:
  """Leaf-by-leaf comparison of two runs' final params, optimizer and model state."""
  import jax

  from launch import checkpoint as ckpt_lib
  with contextlib.redirect_stdout(sys.stderr):  # load's warnings: keep stdout for the summary
    ref = ckpt_lib.load(reference, items=STATE_ITEMS)
    got = ckpt_lib.load(drilled, items=STATE_ITEMS)
  out: dict[str, Any] = {'reference_step': ref['step'], 'drilled_step': got['step']}
  ref_leaves = jax.tree_util.tree_leaves_with_path({k: ref[k] for k in STATE_ITEMS if k in ref})
  got_leaves = jax.tree_util.tree_leaves_with_path({k: got[k] for k in STATE_ITEMS if k in got})
  if [p for p, _ in ref_leaves] != [p for p, _ in got_leaves]:
    out.update(equal=False, error='the two runs have different state trees')
    return out
  worst, worst_path, differing = 0.0, None, []
  for (path, a), (_, b) in zip(ref_leaves, got_leaves):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
      differing.append(jax.tree_util.keystr(path))
      continue
    diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
    if diff > worst or (np.isnan(diff) and not np.isnan(worst)):
      worst, worst_path = diff, jax.tree_util.keystr(path)
    if not np.allclose(b, a, rtol=rtol, atol=atol, equal_nan=True):
      differing.append(jax.tree_util.keystr(path))
  out.update(leaves=len(ref_leaves), max_abs_diff=worst, max_abs_diff_at=worst_path,
             differing_leaves=differing[:10], num_differing=len(differing),
             equal=not differing and ref['step'] == got['step'],
             tolerance={'rtol': rtol, 'atol': atol})
  return out


def compare_losses(reference: str, drilled: str) -> dict[str, Any]:
  """Whether every step's logged train loss is the same in both runs."""
  from launch import metrics as metrics_lib

  def losses(w):
    return {int(r['step']): r['train/loss'] for r in metrics_lib.read_metrics(w)
            if 'train/loss' in r}
  a, b = losses(reference), losses(drilled)
  steps = sorted(set(a) & set(b))
  diff = max((abs(float(a[s]) - float(b[s])) for s in steps), default=0.0)
  return {'logged_steps_same': sorted(a) == sorted(b), 'losses_equal': a == b,
          'max_loss_diff': diff}


# ------------------------------------------------------------------------------------------------
# The drills
# ------------------------------------------------------------------------------------------------

def _total_steps(workdir: str) -> int:
  from launch import checkpoint as ckpt_lib
  return int(ckpt_lib.read_config_dict(workdir)['train']['total_steps'])


def reference_run(args, root: str) -> dict[str, Any]:
  """The uninterrupted run (reused when this exact command already finished it)."""
  workdir = os.path.join(root, 'reference')
  cmd = train_command(args.config, workdir, args.overrides)
  stamp = os.path.join(root, 'reference.json')
  key = {'command': cmd[1:], 'devices': args.devices}
  if os.path.exists(stamp):
    with open(stamp) as f:
      done = json.load(f)
    if done.get('key') == key:
      return {**done['session'], 'reused': True}
  shutil.rmtree(workdir, ignore_errors=True)
  if os.path.exists(stamp):
    os.remove(stamp)
  session = run_session(cmd, child_env(args.devices), workdir,
                        os.path.join(root, 'reference.log'), timeout_s=args.timeout)
  if not session['finished']:
    raise DrillError(f'the reference run did not finish; log: {session["log"]}')
  tmp = stamp + '.tmp'
  with open(tmp, 'w') as f:
    json.dump({'key': key, 'session': session}, f)
  os.replace(tmp, stamp)
  return session


def kill_drill(args, root: str, *, kills: int, resume_devices: int | None = None
               ) -> dict[str, Any]:
  """Interrupts the run ``kills`` times at random moments, rerunning it after each until it
  finishes (on ``resume_devices`` after the first interruption, when given).

  Each moment is drawn from ``--seed``: a step uniformly in the first ``1 / kills_left`` of what
  the session has left (so every kill finds a run to interrupt), plus a jitter of up to two
  reference step times, so signals land inside steps, during asynchronous checkpoint saves and
  during start-up alike.
  """
  workdir = os.path.join(root, args.drill)
  shutil.rmtree(workdir, ignore_errors=True)
  cmd = train_command(args.config, workdir, args.overrides)
  rng = random.Random(args.seed)
  signals = [SIGNALS[s] for s in args.signals]
  reference = os.path.join(root, 'reference')
  total = _total_steps(reference)
  from launch import metrics as metrics_lib
  times = [r['perf/step_time_s'] for r in metrics_lib.read_metrics(reference)
           if isinstance(r.get('perf/step_time_s'), float)]
  step_s = float(np.median(times)) if times else 0.05
  sessions, devices = [], args.devices
  while True:
    interrupted = sum(1 for s in sessions if 'signal' in s and not s.get('missed'))
    plan = None
    if interrupted < kills:
      # Within the first 1/(kills left) of what remains, so the later kills still find a run.
      plan = {'signal': signals[interrupted % len(signals)],
              'fraction': rng.random() / (kills - interrupted),
              'jitter_s': rng.uniform(0.0, 2.0 * step_s), 'total_steps': total}
    s = run_session(cmd, child_env(devices), workdir,
                    os.path.join(root, f'{args.drill}-{len(sessions)}.log'), plan=plan,
                    timeout_s=args.timeout)
    s['devices'] = devices
    sessions.append(s)
    if s['finished']:
      break
    if resume_devices:
      devices = resume_devices
    if len(sessions) > 2 * kills + 2:
      raise DrillError(f'the run did not finish after {len(sessions)} sessions; logs in {root}')
  return {'workdir': workdir, 'sessions': sessions,
          'kills': sum(1 for s in sessions if 'signal' in s and not s.get('missed')),
          'missed': sum(1 for s in sessions if s.get('missed')),
          'resumes': [s['resumed_at'] for s in sessions]}


def break_newest_checkpoint(workdir: str, how: str = 'tmp') -> dict[str, Any]:
  """Leaves the newest checkpoint of ``workdir`` as an interrupted save would.

  ``how='tmp'``: renamed back to Orbax's temporary ``<step>.orbax-checkpoint-tmp-<time>`` with
  its largest array file cut in half (a kill before the final rename); ``'truncate'``: every
  array file of the finished step cut in half (storage that lost the tail of a write).
  """
  from launch import checkpoint as ckpt_lib
  ckpt = ckpt_lib.checkpoint_dir(workdir)
  steps = sorted(int(d) for d in os.listdir(ckpt) if d.isdigit()) if os.path.isdir(ckpt) else []
  if len(steps) < 2:
    raise DrillError(f'{ckpt} holds checkpoints {steps}; the drill needs two (lower '
                     f'--config.checkpoint.every_steps or raise --config.checkpoint.keep)')
  if how not in ('tmp', 'truncate'):
    raise ValueError(f"how must be 'tmp' or 'truncate', got {how!r}")
  newest = os.path.join(ckpt, str(steps[-1]))
  broken = newest
  if how == 'tmp':
    broken = f'{newest}.orbax-checkpoint-tmp-{int(time.time())}'
    os.rename(newest, broken)
  chunks = sorted(glob.glob(os.path.join(broken, 'state', '**', 'd', '*'), recursive=True),
                  key=os.path.getsize, reverse=True)
  if not chunks:
    raise DrillError(f'no array data files under {broken}/state')
  for path in chunks[:1] if how == 'tmp' else chunks:
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)
  return {'broken': broken, 'broken_step': steps[-1], 'expected_resume': steps[-2]}


def half_written_drill(args, root: str) -> dict[str, Any]:
  """Breaks the newest checkpoint of a copy of the reference, then reruns it."""
  workdir = os.path.join(root, args.drill)
  shutil.rmtree(workdir, ignore_errors=True)
  shutil.copytree(os.path.join(root, 'reference'), workdir)
  broken = break_newest_checkpoint(workdir, args.how)
  s = run_session(train_command(args.config, workdir, args.overrides), child_env(args.devices),
                  workdir, os.path.join(root, f'{args.drill}.log'), timeout_s=args.timeout)
  warned = any(('incomplete checkpoint save' in w or 'is unreadable' in w) for w in s['warnings'])
  return {'workdir': workdir, 'how': args.how, **broken, 'sessions': [s],
          'resumes': [s['resumed_at']], 'warned': warned,
          'fell_back': s['resumed_at'] == broken['expected_resume']}


def run_drill(args) -> dict[str, Any]:
  root = os.path.abspath(args.workdir)
  os.makedirs(root, exist_ok=True)
  t0 = time.monotonic()
  reference = reference_run(args, root)
  result: dict[str, Any] = {'drill': args.drill, 'config': args.config,
                            'overrides': list(args.overrides), 'seed': args.seed,
                            'reference': {k: reference.get(k) for k in ('wall_s', 'reused')}}
  rtol = atol = 0.0
  if args.drill == 'kills':
    result.update(kill_drill(args, root, kills=args.kills))
  elif args.drill == 'half_written':
    result.update(half_written_drill(args, root))
  else:
    result.update(kill_drill(args, root, kills=args.kills, resume_devices=args.resume_devices))
    result['devices'] = [s['devices'] for s in result['sessions']]
    rtol, atol = args.rtol, args.atol
  result['interruptions'] = [
      {k: s[k] for k in ('resumed_at', 'signal', 'target_step', 'delay_s', 'last_logged_step',
                         'stopped_at', 'rc', 'missed', 'devices') if k in s}
      for s in result.pop('sessions')]
  result.update(compare_states(os.path.join(root, 'reference'), result['workdir'], rtol, atol))
  result.update(compare_losses(os.path.join(root, 'reference'), result['workdir']))
  ok = result['equal']
  if args.drill == 'half_written':
    ok = ok and result['warned'] and result['fell_back']
  result['ok'] = bool(ok)
  result['wall_s'] = round(time.monotonic() - t0, 1)
  return result


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog='python -m launch.drill', description=__doc__.split('\n')[0])
  p.add_argument('--config', required=True, help='configs/FILE.py:VARIANT, as for launch.train')
  p.add_argument('--workdir', required=True, help='the drill\'s own directory (reference + runs)')
  p.add_argument('--drill', choices=('kills', 'half_written', 'devices'), default='kills')
  p.add_argument('--kills', type=int, default=5, help='interruptions (kills, devices drills)')
  p.add_argument('--seed', type=int, default=0, help='seed of the kill delays')
  p.add_argument('--signals', default='kill,term', help='signals to cycle through: kill,term')
  p.add_argument('--how', choices=('tmp', 'truncate'), default='tmp',
                 help='half_written: a leftover save directory, or truncated array files')
  p.add_argument('--devices', type=int, default=1, help='simulated CPU devices (0: as the '
                 'environment gives)')
  p.add_argument('--resume_devices', type=int, default=4, help='devices drill: after the stop')
  p.add_argument('--rtol', type=float, default=1e-3, help='devices drill tolerance')
  p.add_argument('--atol', type=float, default=1e-5, help='devices drill tolerance')
  p.add_argument('--timeout', type=float, default=900.0, help='seconds per training session')
  p.add_argument('overrides', nargs='*', help='after --: --config.x=y flags for launch.train')
  args = p.parse_args(argv)
  names = [s.strip() for s in args.signals.split(',') if s.strip()]
  unknown = [s for s in names if s not in SIGNALS]
  if unknown or not names:
    p.error(f'--signals: expected a list of {sorted(SIGNALS)}, got {args.signals!r}')
  args.signals = names
  if args.kills < 0 or (args.drill == 'devices' and args.kills < 1):
    p.error(f'--kills must be >= 0 (>= 1 for the devices drill), got {args.kills}')
  if args.drill == 'devices' and args.devices < 1:
    p.error('--devices: the devices drill needs a simulated CPU device count >= 1')
  bad = [o for o in args.overrides if not o.startswith('--config.')]
  if bad:
    p.error(f'overrides after -- must be --config.FIELD=VALUE flags, got {bad}')
  return args


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    result = run_drill(args)
  except DrillError as e:
    print(f'drill: {e}', file=sys.stderr)
    return 2
  print(json.dumps(result, indent=2))
  return 0 if result['ok'] else 1


if __name__ == '__main__':
  sys.exit(main())
