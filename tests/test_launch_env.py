"""Multi-host detection and the demo pipeline end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from launch import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('env, expected', [
    ({}, False),
    ({'SLURM_NTASKS': '1'}, False),
    ({'SLURM_NTASKS': '4'}, True),
    ({'OMPI_COMM_WORLD_SIZE': '2'}, True),
    ({'TPU_WORKER_HOSTNAMES': 'w0'}, False),
    ({'TPU_WORKER_HOSTNAMES': 'w0,w1,w2,w3'}, True),
    ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'}, True),
])
def test_multi_host_environment_detection(env, expected):
  """jax.distributed.initialize() runs only where a launcher says there are peers."""
  assert distributed.is_multi_host_environment(env) is expected


def test_demo_runs_end_to_end(tmp_path):
  """make demo's pipeline, small: videos, VQ training, tokenization, Toto, pictures, summary."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  workdir = tmp_path / 'demo'
  out = subprocess.run([sys.executable, '-m', 'launch.demo', '--workdir', str(workdir),
                        '--videos', '16', '--val_videos', '4', '--vq_steps', '3', '--steps', '4'],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'outputs:' in out.stdout and 'ln(vocab)' in out.stdout and 'PSNR' in out.stdout
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['toto']['steps'] == 4
  assert summary['toto']['final_train_loss'] is not None
  assert summary['toto']['final_eval_loss'] is not None
  assert summary['tokens']['train']['clips'] == 16 and summary['tokens']['val']['clips'] == 4
  assert summary['tokens']['train']['failed'] == 0
  assert 0 < summary['tokenizer']['codes_used'] <= summary['tokenizer']['codebook_size']
  assert summary['tokenizer']['heldout_psnr_db'] > 5
  for name in ('loss.png', 'predictions.png', 'reconstructions.png', 'predictions.gif'):
    assert (workdir / name).stat().st_size > 5_000, name
  assert len(list((workdir / 'videos' / 'train').glob('*.mp4'))) == 16
  assert (workdir / 'toto_tiny' / 'checkpoints' / '4').is_dir()
  assert (workdir / 'vq_tiny' / 'checkpoints' / '3').is_dir()
  assert list((workdir / 'tokens' / 'train').glob('*.array_record'))


def test_resumed_metrics_log_drops_the_steps_being_redone(tmp_path):
  """A run killed after logging step 7 but checkpointed at 5 redoes 6 and 7: one record each."""
  from launch.metrics import MetricsLogger, read_metrics
  path = tmp_path / 'metrics.jsonl'
  lines = [json.dumps({'step': s, 'train/loss': 1.0 / s}) for s in range(1, 8)]
  path.write_text('\n'.join(lines) + '\n{"step": 8, "train/lo')  # torn last line from the kill
  log = MetricsLogger(str(tmp_path), total_steps=10, start_step=5, tensorboard=False,
                      progress_bar=False)
  log.write(6, {'train/loss': 0.5})
  log.close()
  assert [r['step'] for r in read_metrics(str(tmp_path))] == [1, 2, 3, 4, 5, 6]
  assert read_metrics(str(tmp_path))[-1]['train/loss'] == 0.5
