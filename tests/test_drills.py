"""Failure drills (``python -m launch.drill``): a run killed at random moments ends with the
parameters of an uninterrupted one, and a half-written newest checkpoint is skipped with a
warning. (Single kills, SIGTERM, a corrupt finished checkpoint and a different mesh are in
tests/test_resume.py.)"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys

import pytest

from launch import checkpoint as ckpt_lib
from launch import drill
from launch import train as train_lib

DRILL_TOTAL = 12
DRILL_OVERRIDES = {'train.total_steps': DRILL_TOTAL, 'checkpoint.every_steps': 2,
                   'checkpoint.keep': 3}


def test_two_kills_end_with_the_uninterrupted_parameters(tmp_path, helpers):
  overrides = helpers.cli_flags({**helpers.small_overrides, **DRILL_OVERRIDES})
  cmd = [sys.executable, '-m', 'launch.drill', '--config', 'configs/toto.py:tiny', '--workdir',
         str(tmp_path), '--kills', '2', '--seed', '1', '--signals', 'kill,term', '--', *overrides]
  proc = subprocess.run(cmd, cwd=helpers.repo_root, env=helpers.subprocess_env(1),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  result = json.loads(proc.stdout)
  assert result['ok'] and result['equal'] and result['max_abs_diff'] == 0.0
  assert result['reference_step'] == result['drilled_step'] == DRILL_TOTAL
  assert result['leaves'] > 10 and result['num_differing'] == 0
  assert result['losses_equal'] and result['logged_steps_same']
  assert (result['kills'], result['missed']) == (2, 0)

  first, second, last = result['interruptions']
  assert first['resumed_at'] == 0
  assert (first['signal'], first['rc']) == ('SIGKILL', -9)
  assert second['signal'] == 'SIGTERM'
  if second['rc'] == 0:  # the handler was installed: it saved where it stopped
    assert last['resumed_at'] == second['stopped_at'] < DRILL_TOTAL
  assert 'signal' not in last and last['rc'] == 0
  assert first['resumed_at'] <= second['resumed_at'] <= last['resumed_at'] < DRILL_TOTAL
  # Each kill landed after the step the drill drew for it.
  for s in (first, second):
    assert s['last_logged_step'] >= s['target_step'] or s['target_step'] == s['resumed_at']

  # A finished reference is reused by the next drill of the same command.
  assert os.path.exists(tmp_path / 'reference.json')


def test_compare_states_reports_a_difference(baseline_run, tmp_path):
  """The drill's verdict can fail: a run one checkpoint short is not equal to the reference."""
  same = drill.compare_states(baseline_run.workdir, baseline_run.workdir)
  assert same['equal'] and same['max_abs_diff'] == 0.0
  short = str(tmp_path / 'short')
  shutil.copytree(baseline_run.workdir, short)
  os.rename(os.path.join(short, 'checkpoints', '8'), os.path.join(short, 'checkpoints', 'gone'))
  diff = drill.compare_states(baseline_run.workdir, short)
  assert not diff['equal'] and diff['drilled_step'] == 6 and diff['max_abs_diff'] > 0
  assert diff['num_differing'] > 0 and diff['differing_leaves']


def test_half_written_newest_checkpoint_falls_back_with_a_warning(
    baseline_run, small_toto_config, baseline_overrides, eight_devices, tmp_path, helpers):
  """What a kill during an Orbax save leaves (the save's temporary directory, a file cut short):
  the rerun warns, resumes from the previous checkpoint and ends as the uninterrupted run."""
  workdir = str(tmp_path / 'work')
  shutil.copytree(baseline_run.workdir, workdir)
  broken = drill.break_newest_checkpoint(workdir, 'tmp')
  assert broken['broken'].startswith(os.path.join(workdir, 'checkpoints', '8.orbax-checkpoint-tmp-'))
  assert not os.path.exists(os.path.join(workdir, 'checkpoints', '8'))

  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    summary = train_lib.train(small_toto_config(baseline_overrides), workdir,
                              devices=eight_devices[:1])
  stdout = out.getvalue()
  assert f'WARNING: ignoring the incomplete checkpoint save {broken["broken"]}' in stdout
  assert 'resumed at step 6' in stdout
  assert summary['start_step'] == 6 and summary['step'] == 8
  helpers.assert_trees_equal(summary['final_params'], baseline_run.params)
  assert helpers.train_losses(workdir) == baseline_run.losses
  assert ckpt_lib.load(workdir)['step'] == 8  # step 8 saved again, complete this time


def test_child_env_sets_the_device_count(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=8 --xla_foo=1')
  env = drill.child_env(4)
  assert env['XLA_FLAGS'].split() == ['--xla_foo=1', '--xla_force_host_platform_device_count=4']
  assert env['JAX_PLATFORMS'] == 'cpu'
  assert drill.child_env(0)['XLA_FLAGS'] == os.environ['XLA_FLAGS']


def test_usage_errors_name_the_flag(capsys):
  with pytest.raises(SystemExit) as e:
    drill.parse_args(['--config', 'c', '--workdir', 'w', '--signals', 'kill,hup'])
  assert e.value.code == 2 and '--signals' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    drill.parse_args(['--config', 'c', '--workdir', 'w', '--', 'train.lr=1'])
  assert '--config.FIELD=VALUE' in capsys.readouterr().err
  args = drill.parse_args(['--config', 'c', '--workdir', 'w', '--', '--config.train.lr=1'])
  assert args.overrides == ['--config.train.lr=1'] and args.signals == ['kill', 'term']
