"""Resumption: an interrupted run (stop_after_steps, SIGKILL, SIGTERM, a different mesh, a corrupt
latest checkpoint) picks up where its newest good checkpoint left off and ends with the parameters
of an uninterrupted run."""

import contextlib
import glob
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from launch import metrics as metrics_lib
from launch import train as train_lib

TOTAL = 8  # baseline total_steps; checkpoints at 3, 6 and 8


def _train(config, workdir, **kwargs):
  """``train`` with its stdout captured: (summary, stdout)."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    summary = train_lib.train(config, str(workdir), **kwargs)
  return summary, out.getvalue()


def _finished_steps(workdir) -> list[int]:
  """Checkpoint steps whose save completed (Orbax writes ``<step>.orbax-checkpoint-tmp-*`` first
  and renames it to ``<step>`` when the save is done)."""
  ckpt = os.path.join(str(workdir), 'checkpoints')
  if not os.path.isdir(ckpt):
    return []
  return sorted(int(d) for d in os.listdir(ckpt) if d.isdigit())


# ------------------------------------------------------------------------------------------------
# (a) stop_after_steps, then the same call again
# ------------------------------------------------------------------------------------------------

def test_interrupted_then_resumed_run_equals_uninterrupted_run(
    baseline_run, small_toto_config, baseline_overrides, eight_devices, tmp_path, helpers):
  config = small_toto_config(baseline_overrides)
  first, _ = _train(config, tmp_path, devices=eight_devices[:1], stop_after_steps=4)
  assert first['step'] == 4 and first['preempted']
  assert _finished_steps(tmp_path) == [3, 4]  # the periodic one and the one at the stop
  assert sorted(helpers.train_losses(tmp_path)) == [1, 2, 3, 4]

  second, stdout = _train(config, tmp_path, devices=eight_devices[:1])
  assert 'resumed at step 4' in stdout
  assert second['start_step'] == 4 and second['step'] == TOTAL and not second.get('preempted')
  # Bitwise: same data (the iterator was restored), same updates.
  helpers.assert_trees_equal(second['final_params'], baseline_run.params)
  assert helpers.train_losses(tmp_path) == baseline_run.losses
  # Logged steps are neither lost nor repeated across the interruption.
  logged = [r['step'] for r in metrics_lib.read_metrics(str(tmp_path)) if 'train/loss' in r]
  assert logged == list(range(1, TOTAL + 1))

  # Running the finished job again trains nothing and returns the same parameters.
  third, stdout = _train(config, tmp_path, devices=eight_devices[:1])
  assert 'resumed at step 8' in stdout
  assert third['start_step'] == third['step'] == TOTAL
  helpers.assert_trees_equal(third['final_params'], baseline_run.params)


# ------------------------------------------------------------------------------------------------
# (d) resume onto a different mesh
# ------------------------------------------------------------------------------------------------

def test_resume_on_a_different_mesh(baseline_run, small_toto_config, baseline_overrides,
                                    eight_devices, tmp_path, helpers):
  """3 steps on 8 devices (data=2 x fsdp=2 x tensor=2), the rest on 1 device."""
  sharded = small_toto_config({**baseline_overrides, 'mesh.ici': (2, 2, 2)})
  first, _ = _train(sharded, tmp_path, stop_after_steps=3)
  assert first['step'] == 3
  assert first['final_params']['embed'].sharding.spec[0] == 'tensor'

  single = small_toto_config(baseline_overrides)
  second, stdout = _train(single, tmp_path, devices=eight_devices[:1])
  assert 'resumed at step 3' in stdout and 'data=1 x fsdp=1 x tensor=1' in stdout
  assert second['step'] == TOTAL
  params = second['final_params']
  assert len(params['embed'].sharding.device_set) == 1
  helpers.assert_trees_close(params, baseline_run.params, rtol=1e-4, atol=2e-6)
  resumed = helpers.train_losses(tmp_path)
  np.testing.assert_allclose([resumed[s] for s in range(1, TOTAL + 1)],
                             [baseline_run.losses[s] for s in range(1, TOTAL + 1)], rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# (e) a corrupt newest checkpoint
# ------------------------------------------------------------------------------------------------

def _copy_with_corrupt_latest(baseline_run, dest) -> str:
  """A copy of the baseline workdir whose newest checkpoint (step 8) has truncated array data."""
  workdir = str(dest / 'work')
  shutil.copytree(baseline_run.workdir, workdir)
  assert _finished_steps(workdir) == [3, 6, 8]
  chunks = glob.glob(os.path.join(workdir, 'checkpoints', '8', 'state', '**', 'd', '*'),
                     recursive=True)
  assert chunks, 'no array data files found in the step-8 checkpoint'
  for path in chunks:
    with open(path, 'r+b') as f:
      f.truncate(0)
  return workdir


def test_corrupt_latest_checkpoint_falls_back_to_previous(baseline_run, small_toto_config,
                                                          baseline_overrides, eight_devices,
                                                          tmp_path, helpers, caplog):
  workdir = _copy_with_corrupt_latest(baseline_run, tmp_path)
  config = small_toto_config(baseline_overrides)
  summary, stdout = _train(config, workdir, devices=eight_devices[:1], stop_after_steps=1)
  assert 'WARNING: checkpoint at step 8 is unreadable' in stdout
  assert 'falling back to an older checkpoint' in stdout
  assert any('checkpoint at step 8 could not be restored' in r.getMessage()
             for r in caplog.records)
  assert 'resumed at step 6' in stdout
  assert summary['start_step'] == 6 and summary['step'] == 7
  # Step 7 replays exactly: state and data iterator both came from the step-6 checkpoint.
  assert helpers.train_losses(workdir)[7] == baseline_run.losses[7]


def test_corrupt_latest_checkpoint_run_completes_with_uninterrupted_params(
    baseline_run, small_toto_config, baseline_overrides, eight_devices, tmp_path, helpers):
  workdir = _copy_with_corrupt_latest(baseline_run, tmp_path)
  config = small_toto_config(baseline_overrides)
  summary, _ = _train(config, workdir, devices=eight_devices[:1])
  assert summary['start_step'] == 6 and summary['step'] == TOTAL
  helpers.assert_trees_equal(summary['final_params'], baseline_run.params)
  # And the rewritten step-8 checkpoint is readable: a further call resumes from it.
  again, stdout = _train(config, workdir, devices=eight_devices[:1])
  assert 'resumed at step 8' in stdout and again['step'] == TOTAL


# ------------------------------------------------------------------------------------------------
# (b, c) the command line, killed for real
# ------------------------------------------------------------------------------------------------

CLI_TOTAL = 30
CLI_OVERRIDES = {'train.total_steps': CLI_TOTAL, 'checkpoint.every_steps': 3}


def _cli_command(helpers, workdir) -> list[str]:
  overrides = {**helpers.small_overrides, **CLI_OVERRIDES}
  return [sys.executable, '-m', 'launch.train', '--config', 'configs/toto.py:tiny',
          '--workdir', str(workdir), *helpers.cli_flags(overrides)]


def _start(helpers, workdir, log_path) -> subprocess.Popen:
  log = open(log_path, 'w')
  proc = subprocess.Popen(_cli_command(helpers, workdir), cwd=helpers.repo_root,
                          env=helpers.subprocess_env(device_count=1), stdout=log,
                          stderr=subprocess.STDOUT)
  log.close()
  return proc


def _run_to_completion(helpers, workdir, log_path) -> str:
  proc = _start(helpers, workdir, log_path)
  try:
    rc = proc.wait(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  text = open(log_path).read()
  assert rc == 0, f'exit code {rc}:\n{text[-4000:]}'
  assert f'[train] done at step {CLI_TOTAL}/{CLI_TOTAL}' in text, text[-4000:]
  return text


def _wait_for_first_checkpoint(proc, workdir, log_path, timeout=240.0) -> list[int]:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    steps = _finished_steps(workdir)
    if steps:
      return steps
    if proc.poll() is not None:
      pytest.fail(f'training exited ({proc.returncode}) before its first checkpoint:\n'
                  + open(log_path).read()[-4000:])
    time.sleep(0.005)
  proc.kill()
  proc.wait()
  pytest.fail('no checkpoint within the time limit:\n' + open(log_path).read()[-4000:])


def _final_state(workdir, step=CLI_TOTAL) -> dict:
  import orbax.checkpoint as ocp
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # "sharding info not provided": same 1-device layout
    return ocp.StandardCheckpointer().restore(
        os.path.join(str(workdir), 'checkpoints', str(step), 'state'))


@pytest.fixture(scope='module')
def cli_reference(tmp_path_factory, helpers):
  """An uninterrupted ``python -m launch.train`` run of the CLI config."""
  root = tmp_path_factory.mktemp('cli_reference')
  workdir = root / 'work'
  _run_to_completion(helpers, workdir, root / 'log.txt')
  return workdir, helpers.to_numpy(_final_state(workdir)), helpers.train_losses(workdir)


def test_sigkill_then_rerun_matches_uninterrupted_run(cli_reference, tmp_path, helpers):
  ref_dir, ref_state, ref_losses = cli_reference
  assert sorted(ref_losses) == list(range(1, CLI_TOTAL + 1))
  workdir = tmp_path / 'work'

  proc = _start(helpers, workdir, tmp_path / 'killed.txt')
  _wait_for_first_checkpoint(proc, workdir, tmp_path / 'killed.txt')
  proc.send_signal(signal.SIGKILL)
  assert proc.wait(timeout=60) == -signal.SIGKILL
  at_kill = _finished_steps(workdir)
  assert at_kill and max(at_kill) < CLI_TOTAL, f'the run finished before the kill: {at_kill}'
  logged_before = helpers.train_losses(workdir)
  assert logged_before and max(logged_before) < CLI_TOTAL

  text = _run_to_completion(helpers, workdir, tmp_path / 'rerun.txt')
  assert f'resumed at step {max(at_kill)}' in text, text[-4000:]
  state = helpers.to_numpy(_final_state(workdir))
  assert int(state['step']) == CLI_TOTAL
  helpers.assert_trees_equal(state['params'], ref_state['params'])
  helpers.assert_trees_equal(state['opt_state'], ref_state['opt_state'])
  # Every step (the final loss included) logged as in the uninterrupted run, and the steps the
  # killed run had already done past its checkpoint were replayed on exactly the same batches.
  assert helpers.train_losses(workdir) == ref_losses
  for step, loss in logged_before.items():
    assert loss == ref_losses[step], step
  # The records the killed run wrote past its checkpoint were replaced, not duplicated.
  from launch.metrics import read_metrics
  logged = [r['step'] for r in read_metrics(str(workdir)) if 'train/loss' in r]
  assert sorted(logged) == list(range(1, CLI_TOTAL + 1))


def test_sigterm_checkpoints_exits_0_and_resumes(cli_reference, tmp_path, helpers):
  _, ref_state, ref_losses = cli_reference
  workdir = tmp_path / 'work'
  log = tmp_path / 'terminated.txt'

  proc = _start(helpers, workdir, log)
  _wait_for_first_checkpoint(proc, workdir, log)
  proc.send_signal(signal.SIGTERM)
  rc = proc.wait(timeout=120)
  text = open(log).read()
  assert rc == 0, f'exit code {rc} after SIGTERM:\n{text[-4000:]}'
  match = re.search(r'stopping at step (\d+) \(SIGTERM\); checkpoint saved', text)
  assert match, f'no preemption message (did the run finish first?):\n{text[-4000:]}'
  stopped = int(match.group(1))
  assert stopped < CLI_TOTAL
  assert f'[train] stopped at step {stopped}/{CLI_TOTAL}' in text and '[train] done' not in text
  assert max(_finished_steps(workdir)) == stopped  # saved at the step it stopped, not earlier
  assert max(helpers.train_losses(workdir)) == stopped
  np.testing.assert_array_equal(_final_state(workdir, stopped)['step'], stopped)

  text = _run_to_completion(helpers, workdir, tmp_path / 'rerun.txt')
  assert f'resumed at step {stopped}' in text, text[-4000:]
  state = helpers.to_numpy(_final_state(workdir))
  helpers.assert_trees_equal(state['params'], ref_state['params'])
  assert helpers.train_losses(workdir) == ref_losses
