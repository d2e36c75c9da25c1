"""Shared test set-up: 8 simulated CPU devices, fast compiles, small Toto configs, one baseline run.

Everything here runs before any test module imports jax, so the environment below decides how the
CPU backend starts:

* ``--xla_force_host_platform_device_count=8``: the host CPU shows up as 8 devices, so meshes such
  as data=2 x fsdp=2 x tensor=2 run (and shard for real) on a laptop or CI machine.
* ``JAX_PLATFORMS=cpu``: never pick up an accelerator, so numbers do not depend on the machine.
* ``--xla_backend_optimization_level=0`` (unless XLA_FLAGS already sets a level): compiling the
  tiny test models dominates their run time and LLVM at -O0 compiles them 2-3x faster (runs that
  are compared with each other are always made under the same flags).
* A persistent compilation cache (a temporary directory, shared with the subprocesses the CLI tests
  start, unless ``JAX_COMPILATION_CACHE_DIR`` is already set): every ``train`` call builds fresh
  jitted functions, so without it each run of the same config would recompile from scratch.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile


def _test_xla_flags(existing: str, device_count: int) -> str:
  flags = [f for f in existing.split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  flags.append(f'--xla_force_host_platform_device_count={device_count}')
  if not any(f.startswith('--xla_backend_optimization_level') for f in flags):
    flags.append('--xla_backend_optimization_level=0')
  return ' '.join(flags)


if 'jax' in sys.modules:  # pragma: no cover - a plugin imported jax first: flags may be too late
  print('tests/conftest.py: jax was imported before the test environment was set; the 8-device '
        'tests will fail', file=sys.stderr)
os.environ['XLA_FLAGS'] = _test_xla_flags(os.environ.get('XLA_FLAGS', ''), 8)
os.environ['JAX_PLATFORMS'] = 'cpu'
if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
  _CACHE_DIR = tempfile.mkdtemp(prefix='jax-test-cache-')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE_DIR
  atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import jax  # noqa: E402  (after the environment above)
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The small Toto run every trainer test builds on (dotted config paths, as on the command line).
# One step is a few tens of milliseconds on one CPU core; global batch 8 = 2 microbatches of 4 so
# gradient accumulation is always exercised; checkpoints at steps 3, 6 and 8.
SMALL_TOTO_OVERRIDES = {
    'model.dim': 32,
    'model.num_layers': 2,
    'model.num_heads': 4,
    'model.num_kv_heads': 4,
    'model.mlp_dim': 64,
    'model.vocab_size': 64,            # codebook 60 + 4 reserved ids (padded to 128 rows)
    'model.max_len': 33,               # 2 frames x 4 x 4 + start marker
    'data.frames': 2,
    'data.frame_h': 4,
    'data.frame_w': 4,
    'data.codebook_size': 60,
    'data.synthetic_clips': 256,
    'train.global_batch_size': 8,
    'train.microbatch_size': 4,
    'train.total_steps': 8,
    'train.warmup_steps': 2,
    'checkpoint.every_steps': 3,
    'log.every_steps': 1,
    'log.progress_bar': False,
    'log.tensorboard': False,
    'eval.every_steps': 0,
    'eval.batches': 2,
}


def apply_overrides(config, overrides: dict) -> None:
  """Sets ``{'train.lr': 1e-3, 'mesh.ici': (2, 2, 2), ...}`` on an ml_collections config."""
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      node = node[p]
    if key in ('mesh.ici', 'mesh.dcn') and isinstance(value, (tuple, list)):
      for axis, size in zip(('data', 'fsdp', 'tensor'), value):
        node[leaf][axis] = size
    else:
      node[leaf] = value


def make_small_toto_config(overrides: dict | None = None, **kwargs):
  """``configs.toto.get_config('tiny')`` shrunk to milliseconds per step.

  Overrides take dotted paths in a dict (``{'train.lr': 1e-2}``) and/or keyword arguments with
  ``__`` for the dots (``train__lr=1e-2``); ``mesh.ici`` / ``mesh__ici`` may be a
  ``(data, fsdp, tensor)`` tuple.
  """
  from configs import toto
  config = toto.get_config('tiny')
  apply_overrides(config, SMALL_TOTO_OVERRIDES)
  apply_overrides(config, dict(overrides or {}))
  apply_overrides(config, {k.replace('__', '.'): v for k, v in kwargs.items()})
  return config


def cli_flags(overrides: dict) -> list[str]:
  """``--config.a.b=value`` flags for ``python -m launch.train``."""
  return [f'--config.{k}={v}' for k, v in overrides.items()]


def subprocess_env(device_count: int = 1) -> dict:
  """The environment for a ``python -m launch.train`` child: CPU only, ``device_count`` devices,
  the same compilation cache as this process."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = _test_xla_flags(env.get('XLA_FLAGS', ''), device_count)
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = REPO_ROOT + os.pathsep + env.get('PYTHONPATH', '')
  env['PYTHONUNBUFFERED'] = '1'
  return env


def train_losses(workdir) -> dict[int, float]:
  """step -> train/loss from ``metrics.jsonl`` (the last record wins for a repeated step)."""
  from launch import metrics as metrics_lib
  return {r['step']: r['train/loss'] for r in metrics_lib.read_metrics(str(workdir))
          if 'train/loss' in r}


def to_numpy(tree):
  return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def assert_trees_equal(actual, expected):
  a = jax.tree_util.tree_leaves_with_path(to_numpy(actual))
  e = jax.tree_util.tree_leaves_with_path(to_numpy(expected))
  assert [p for p, _ in a] == [p for p, _ in e]
  for (path, x), (_, y) in zip(a, e):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def assert_trees_close(actual, expected, rtol: float, atol: float):
  a = jax.tree_util.tree_leaves_with_path(to_numpy(actual))
  e = jax.tree_util.tree_leaves_with_path(to_numpy(expected))
  assert [p for p, _ in a] == [p for p, _ in e]
  for (path, x), (_, y) in zip(a, e):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


def random_vq_tokenizer():
  """A tiny randomly initialised VQ tokenizer (stride 4: 16 px frames -> 4x4 codes over 16
  codes), for CLI tests that must tokenize without trained weights."""
  from tokenizers_jax import api, vq
  cfg = vq.VQConfig(channels=(8, 16), res_blocks=0, mid_blocks=1, embed_dim=4, codebook_size=16,
                    groups=4)
  params = vq.VQVAE(cfg).init(jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32))['params']
  return api.from_vq(cfg, params, vq.init_codebook_state(jax.random.key(1), 16, 4),
                     resolution=16, name='random-vq')


class Helpers:
  """Namespace handed to tests by the ``helpers`` fixture (test modules cannot import conftest
  reliably under every pytest import mode)."""
  repo_root = REPO_ROOT
  small_overrides = SMALL_TOTO_OVERRIDES
  small_toto_config = staticmethod(make_small_toto_config)
  cli_flags = staticmethod(cli_flags)
  subprocess_env = staticmethod(subprocess_env)
  train_losses = staticmethod(train_losses)
  to_numpy = staticmethod(to_numpy)
  assert_trees_equal = staticmethod(assert_trees_equal)
  assert_trees_close = staticmethod(assert_trees_close)
  random_vq_tokenizer = staticmethod(random_vq_tokenizer)


@pytest.fixture(scope='session')
def helpers():
  return Helpers


@pytest.fixture(scope='session')
def small_toto_config():
  """``small_toto_config(**overrides)`` -> a fresh small Toto config (see make_small_toto_config)."""
  return make_small_toto_config


@pytest.fixture(scope='session')
def eight_devices():
  devices = jax.devices()
  assert len(devices) == 8 and devices[0].platform == 'cpu', (
      f'expected 8 simulated CPU devices, got {devices}; XLA_FLAGS must be set before jax starts')
  return devices


class Run:
  """What a finished ``train`` call left behind."""

  def __init__(self, config, workdir, summary, stdout: str = ''):
    self.config = config
    self.workdir = str(workdir)
    self.summary = summary
    self.params = to_numpy(summary['final_params'])
    self.stdout = stdout

  @property
  def records(self) -> list[dict]:
    from launch import metrics as metrics_lib
    return metrics_lib.read_metrics(self.workdir)

  @property
  def losses(self) -> dict[int, float]:
    return train_losses(self.workdir)


BASELINE_OVERRIDES = {
    'eval.every_steps': 4,      # eval/loss at steps 4 and 8
    'log.tensorboard': True,
}


@pytest.fixture(scope='session')
def baseline_run(tmp_path_factory, eight_devices):
  """The reference: the small config trained uninterrupted for 8 steps on ONE device (mesh all
  1 / -1), with eval and TensorBoard on. Sharding, resume and accumulation tests compare to it."""
  from launch import train as train_lib
  config = make_small_toto_config(BASELINE_OVERRIDES)
  workdir = tmp_path_factory.mktemp('baseline')
  summary = train_lib.train(config, str(workdir), devices=eight_devices[:1])
  assert summary['step'] == config.train.total_steps
  return Run(config, workdir, summary)


@pytest.fixture(scope='session')
def baseline_overrides():
  return dict(BASELINE_OVERRIDES)


def pytest_report_header(config):
  return [f'XLA_FLAGS={os.environ.get("XLA_FLAGS")}  JAX_PLATFORMS={os.environ.get("JAX_PLATFORMS")}',
          f'JAX_COMPILATION_CACHE_DIR={os.environ.get("JAX_COMPILATION_CACHE_DIR")}']

