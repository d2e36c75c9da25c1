"""AOT scale check (``launch/aot.py``): the real train step compiled for a small TPU slice on CPU.

Needs ``libtpu`` (the ``tpu`` extra); skipped without it. The compile-only TPU devices come from
libtpu and live beside the 8 simulated CPU devices of the test session.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
import pytest

pytest.importorskip('libtpu')

from launch import aot  # noqa: E402
from launch import tpu_pod  # noqa: E402
from launch.sharding import ConfigError  # noqa: E402

V5E_4 = tpu_pod.parse_accelerator('v5e-4')


@pytest.fixture(scope='module')
def report(small_toto_config):
  """The small Toto config on a v5e 2x2 slice, fsdp=2 x tensor=2, bf16, 2 microbatches."""
  config = small_toto_config({'mesh.ici': (1, 2, 2), 'model.dtype': 'bfloat16',
                              'model.remat_policy': 'full'})
  return aot.check(config, V5E_4, mfu=0.4, tokens=1e9, config_name='small'), config


def test_compiles_the_train_step_for_the_slice(report):
  rep, config = report
  s = rep.summary
  assert rep.fits and s['fits']
  assert (s['chips'], s['device_kind'], s['topology_name']) == (4, 'TPU v5 lite', 'v5e:2x2')
  assert s['mesh'] == 'data=1 x fsdp=2 x tensor=2'
  assert (s['global_batch_size'], s['microbatch_size'], s['accumulation']) == (8, 4, 2)
  assert (s['dtype'], s['remat_policy']) == ('bfloat16', 'full')
  assert s['attention_impl'] == 'xla'  # what "auto" picks on a TPU, not the CPU's blockwise path
  assert s['tokens_per_step'] == 8 * 33  # 2 frames x 4 x 4 + start marker, next-token pairs


def test_memory_is_per_chip_and_accounts_for_the_sharded_state(report, small_toto_config):
  """The executable's arguments hold at least this chip's shard of params + AdamW state + batch;
  donation aliases the state; the total adds up the way the module says."""
  rep, config = report
  m = rep.summary['memory']
  from launch import optim, train as train_lib, tasks as tasks_lib, sharding as shard_lib
  import flax.linen as nn
  devices = aot.topology_devices(V5E_4)
  mesh = aot.topology_mesh(config.mesh, devices)
  rules = shard_lib.rules_of(config)
  task = tasks_lib.get_task(config)
  tx = optim.make_optimizer(config.train)
  key = jax.eval_shape(lambda: jax.random.key(0))
  with nn.logical_axis_rules(rules):
    abstract, shardings = train_lib.state_shardings(task, tx, mesh, rules, key)
  state_bytes = sum(
      math.prod(s.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize
      for a, s in zip(jax.tree_util.tree_leaves(abstract), jax.tree_util.tree_leaves(shardings)))
  full_bytes = sum(a.size * np.dtype(a.dtype).itemsize for a in jax.tree_util.tree_leaves(abstract))
  assert state_bytes < full_bytes  # really sharded: fsdp x tensor splits most of it
  assert m['argument_bytes'] >= state_bytes
  assert m['alias_bytes'] >= 0.9 * state_bytes  # the state is donated
  assert m['total_bytes'] == (m['argument_bytes'] + m['output_bytes'] - m['alias_bytes']
                              + m['temp_bytes'] + m['code_bytes'])
  assert m['hbm_fraction'] == pytest.approx(m['total_bytes'] / (16 * 2 ** 30))


def test_flops_and_projection(report):
  rep, config = report
  s = rep.summary
  from launch import tasks as tasks_lib
  task = tasks_lib.get_task(config)
  per_token = task.train_flops_per_example() / task.tokens_per_example()
  assert s['model_flops_per_token'] == pytest.approx(per_token)
  assert s['peak_flops_per_chip'] == 197e12
  assert s['projected_seconds'] == pytest.approx(1e9 * per_token / (4 * 197e12 * 0.4))
  assert s['compiled_flops_per_chip'] > 0
  assert 'FITS' in rep.table() and 'v5e-4' in rep.table()


def test_reports_a_config_that_does_not_fit(small_toto_config):
  """The same step against a chip with 1 MiB of HBM must be reported as not fitting."""
  tiny_hbm = dataclasses.replace(V5E_4, generation=dataclasses.replace(
      V5E_4.generation, hbm_bytes=2 ** 20))
  rep = aot.check(small_toto_config({'train.microbatch_size': 0}), tiny_hbm)
  assert not rep.fits and not rep.summary['fits']
  assert rep.summary['memory']['hbm_fraction'] > 1
  assert 'DOES NOT FIT' in rep.table()


def test_batch_that_cannot_be_split_over_the_slice_names_the_field(small_toto_config):
  config = small_toto_config({'train.global_batch_size': 6, 'train.microbatch_size': 2})
  with pytest.raises(ConfigError, match='train.microbatch_size'):
    aot.check(config, V5E_4)
