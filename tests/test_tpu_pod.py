"""TPU pod launcher (``launch/tpu_pod.py``, checked through ``--dry-run``) and the SLURM script."""

from __future__ import annotations

import os
import shlex
import subprocess

import pytest

from launch import tpu_pod

POD = ['--name', 'toto-1b', '--zone', 'us-east5-a', '--project', 'proj', '--accelerator', 'v5p-128']
TRAIN = ['--config', 'configs/toto.py:1b', '--workdir', '/mnt/runs/toto 1b',
         '--config.model.dtype=bfloat16']


def dry_run(capsys, *argv) -> tuple[int, list[list[str]], str]:
  """Runs the CLI with --dry-run; returns (exit code, the printed commands as argv lists, stderr)."""
  argv = list(argv)
  cut = argv.index('--') if '--' in argv else len(argv)
  code = tpu_pod.main(argv[:cut] + ['--dry-run'] + argv[cut:])
  out = capsys.readouterr()
  commands = [shlex.split(line) for line in out.out.splitlines() if line and not line.startswith('#')]
  return code, commands, out.err


def remote(cmd: list[str]) -> str:
  return next(a for a in cmd if a.startswith('--command=')).split('=', 1)[1]


@pytest.mark.parametrize('text, gcloud_type, chips, topology, hosts, wrap', [
    ('v5p-128', 'v5p-128', 64, 'v5:4x4x4', 16, (True, True, True)),
    ('v5p-8', 'v5p-8', 4, 'v5:2x2x1', 1, (False, False, False)),
    ('v5p-32', 'v5p-32', 16, 'v5:2x2x4', 4, (False, False, False)),
    ('v4-64', 'v4-64', 32, 'v4:2x4x4', 8, (False, False, False)),
    ('v5e-256', 'v5litepod-256', 256, 'v5e:16x16', 64, (True, True, False)),
    ('v5litepod-16', 'v5litepod-16', 16, 'v5e:4x4', 4, (False, False, False)),
    ('v5e-8', 'v5litepod-8', 8, 'v5e:2x4', 1, (False, False, False)),
    ('v6e-128', 'v6e-128', 128, 'v6e:8x16', 32, (False, True, False)),
    ('v5p:4x4x12', 'v5p-384', 192, 'v5:4x4x12', 48, (True, True, True)),
])
def test_accelerator_table(text, gcloud_type, chips, topology, hosts, wrap):
  acc = tpu_pod.parse_accelerator(text)
  assert (acc.gcloud_type, acc.chips, acc.topology_name, acc.hosts, acc.wrap) == (
      gcloud_type, chips, topology, hosts, wrap)


@pytest.mark.parametrize('text, words', [
    ('v9-8', 'unknown TPU accelerator type'),
    ('v5p-7', 'multiple of 2'),
    ('v5p-24', 'no standard v5p slice has 12 chips'),
    ('v5e:4x4x4', '2D grid'),
])
def test_bad_accelerator_names_are_rejected(text, words):
  with pytest.raises(ValueError, match=words):
    tpu_pod.parse_accelerator(text)


def test_create_tpu_vm_and_queued_resource(capsys):
  code, cmds, _ = dry_run(capsys, 'create', *POD, '--spot')
  assert code == 0
  assert cmds == [['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'toto-1b',
                   '--accelerator-type=v5p-128', '--version=v2-alpha-tpuv5', '--spot',
                   '--zone=us-east5-a', '--project=proj']]

  code, cmds, _ = dry_run(capsys, 'create', '--name', 'e', '--zone', 'us-west4-a',
                          '--accelerator', 'v5e-256', '--queued')
  assert code == 0
  assert cmds == [['gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'e', '--node-id=e',
                   '--accelerator-type=v5litepod-256', '--runtime-version=v2-alpha-tpuv5-lite',
                   '--zone=us-west4-a']]

  code, cmds, _ = dry_run(capsys, 'create', *POD, '--queued', '--num-slices', '2',
                          '--version', 'v2-alpha-tpuv5-custom')
  assert cmds[0][5:9] == ['toto-1b', '--node-count=2', '--node-prefix=toto-1b',
                          '--accelerator-type=v5p-128']
  assert '--runtime-version=v2-alpha-tpuv5-custom' in cmds[0]


def test_copy_ships_the_checkout_to_every_worker(capsys):
  code, cmds, _ = dry_run(capsys, 'copy', *POD)
  assert code == 0
  tar, scp, ssh = cmds
  assert tar[:3] == ['tar', '-czf', tpu_pod.Pod('toto-1b', 'z', None,
                                                tpu_pod.parse_accelerator('v5p-8')).archive]
  assert '--exclude=./.venv' in tar and '--exclude=./.git' in tar
  assert tar[-3:] == ['-C', tpu_pod.REPO_ROOT, '.']
  assert scp[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp']
  assert scp[6] == 'toto-1b:toto-1b-repo.tar.gz' and '--worker=all' in scp
  assert ssh[4:7] == ['ssh', 'toto-1b', '--worker=all']
  assert 'tar -xzf toto-1b-repo.tar.gz -C people-pixels-jax' in remote(ssh)


def test_install_on_every_worker(capsys):
  code, cmds, _ = dry_run(capsys, 'install', *POD, '--python', 'python3.11')
  assert code == 0 and len(cmds) == 1
  assert '--worker=all' in cmds[0]
  assert remote(cmds[0]) == ('cd people-pixels-jax && python3.11 -m pip install --upgrade pip && '
                             'python3.11 -m pip install -e ".[tpu]"')


def test_train_starts_the_same_command_on_all_workers_under_nohup(capsys):
  code, cmds, _ = dry_run(capsys, 'train', *POD, '--', *TRAIN)
  assert code == 0 and len(cmds) == 1
  command = remote(cmds[0])
  assert '--worker=all' in cmds[0]
  assert 'LAUNCH_MULTI_HOST=1 setsid nohup python3 -m launch.train' in command
  assert '> "logs/train-$(hostname).log" 2>&1 < /dev/null &' in command
  assert 'echo $! > logs/train.pid' in command
  # The training arguments arrive intact (the space in the workdir stays one argument).
  launched = shlex.split(command.split('nohup ', 1)[1].split(' >', 1)[0])
  assert launched == ['python3', '-m', 'launch.train', *TRAIN]


def test_single_host_train_does_not_ask_for_jax_distributed(capsys):
  code, cmds, _ = dry_run(capsys, 'train', *POD[:-1], 'v5p-8', '--', *TRAIN)
  assert code == 0 and 'LAUNCH_MULTI_HOST' not in remote(cmds[0])


def test_multi_slice_sets_the_dcn_mesh_and_addresses_every_slice(capsys):
  code, cmds, _ = dry_run(capsys, 'train', *POD, '--queued', '--num-slices', '4', '--', *TRAIN)
  assert code == 0
  assert [c[5] for c in cmds] == [f'toto-1b-{i}' for i in range(4)]
  for c in cmds:
    assert remote(c).count('--config.mesh.dcn.data=4') == 1
  # An explicit DCN layout from the user is kept as given.
  code, cmds, _ = dry_run(capsys, 'train', *POD, '--queued', '--num-slices', '2', '--', *TRAIN,
                          '--config.mesh.dcn.fsdp=2')
  assert '--config.mesh.dcn.data' not in remote(cmds[0])


def test_logs_stop_delete(capsys):
  code, cmds, _ = dry_run(capsys, 'logs', *POD)
  assert code == 0 and len(cmds) == 1 and '--worker=0' in cmds[0]
  assert remote(cmds[0]) == 'tail -n 100 -f people-pixels-jax/logs/train-*.log'
  _, cmds, _ = dry_run(capsys, 'logs', *POD, '--all-workers', '--no-follow', '--lines', '5')
  assert '--worker=all' in cmds[0]
  assert remote(cmds[0]) == 'tail -n 5 people-pixels-jax/logs/train-*.log'

  _, cmds, _ = dry_run(capsys, 'stop', *POD)
  assert '--worker=all' in cmds[0]
  assert 'kill -TERM "$(cat people-pixels-jax/logs/train.pid)"' in remote(cmds[0])

  _, cmds, _ = dry_run(capsys, 'delete', *POD)
  assert cmds == [['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'toto-1b', '--quiet',
                   '--zone=us-east5-a', '--project=proj']]
  _, cmds, _ = dry_run(capsys, 'delete', *POD, '--queued')
  assert cmds[0][3:8] == ['queued-resources', 'delete', 'toto-1b', '--force', '--quiet']


def test_up_runs_every_step_in_order(capsys):
  code = tpu_pod.main(['up', *POD, '--queued', '--dry-run', '--', *TRAIN])
  out = capsys.readouterr().out
  assert code == 0
  steps = [line[2:] for line in out.splitlines() if line in ('# create', '# wait', '# copy',
                                                             '# install', '# train')]
  assert steps == ['create', 'wait', 'copy', 'install', 'train']
  assert 'queued-resources describe toto-1b' in out
  assert '64 chips v5:4x4x4, 16 host(s)' in out


@pytest.mark.parametrize('argv, words', [
    (['create', '--name', 'x', '--accelerator', 'v5p-128'], '--zone is required'),
    (['create', '--name', 'x', '--zone', 'z', '--accelerator', 'tpu-128'],
     'unknown TPU accelerator type'),
    (['create', '--name', 'X_1', '--zone', 'z', '--accelerator', 'v5p-8'], '--name'),
    (['create', *POD, '--num-slices', '2'], 'needs --queued'),
    (['train', *POD, '--', '--config.train.lr=1'], 'at least --config'),
    (['up', *POD], 'at least --config'),
])
def test_invalid_input_fails_with_a_clear_message(capsys, argv, words):
  code, cmds, err = dry_run(capsys, *argv)
  assert code == 2 and not cmds
  assert words in err


# ------------------------------------------------------------------------------------------------
# SLURM
# ------------------------------------------------------------------------------------------------

SBATCH = os.path.join(tpu_pod.REPO_ROOT, 'launch', 'slurm', 'train.sbatch')


def test_sbatch_script_parses():
  subprocess.run(['bash', '-n', SBATCH], check=True)


def test_sbatch_passes_its_arguments_to_srun_unchanged(tmp_path):
  """The script runs under a stand-in ``srun`` that records its argv, one argument per line."""
  record = tmp_path / 'srun.args'
  fake = tmp_path / 'bin' / 'srun'
  fake.parent.mkdir()
  fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {shlex.quote(str(record))}\n')
  fake.chmod(0o755)
  env = {'PATH': f'{fake.parent}{os.pathsep}{os.environ["PATH"]}', 'SLURM_SUBMIT_DIR': str(tmp_path),
         'SLURM_JOB_ID': '42', 'PYTHON': '/opt/py/bin/python'}
  args = ['--config', 'configs/toto.py:1b', '--workdir', '/shared/runs/a b',
          '--config.model.dtype=bfloat16', "--config.train.lr=3e-4"]
  result = subprocess.run(['bash', SBATCH, *args], env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  argv = record.read_text().splitlines()
  assert argv[argv.index('/opt/py/bin/python'):] == ['/opt/py/bin/python', '-m', 'launch.train',
                                                     *args]
  assert '--ntasks-per-node=1' in argv
  text = open(SBATCH).read()
  assert '#SBATCH --ntasks-per-node=1' in text and '#SBATCH --gpus-per-node=' in text

  # No arguments: a usage message, not a job that trains nothing.
  result = subprocess.run(['bash', SBATCH], env=env, capture_output=True, text=True)
  assert result.returncode == 2 and 'pass the training arguments' in result.stderr
