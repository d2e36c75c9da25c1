"""Sharding: an 8-device data x fsdp x tensor run computes what a 1-device run computes, places
every parameter as the rules table says, and the mesh helpers resolve / reject sizes correctly."""

import contextlib
import io
import math

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from launch import sharding as shard_lib
from launch import train as train_lib
from launch.sharding import ConfigError

MESH_2x2x2 = {'mesh.ici': (2, 2, 2)}
SIZES_2x2x2 = {'data': 2, 'fsdp': 2, 'tensor': 2}

# Parameter -> (shape, partition spec) under configs/common.DEFAULT_RULES for the small config:
# vocab 64 padded to 128 rows, dim 32, 4 heads x 8, mlp 64, 2 scanned layers (leading axis).
EXPECTED_LAYOUT = {
    'embed': ((128, 32), ('tensor', 'fsdp')),
    'lm_head/kernel': ((32, 128), ('fsdp', 'tensor')),
    'final_norm/scale': ((32,), ('fsdp',)),
    'layers/attn_norm/scale': ((2, 32), (None, 'fsdp')),
    'layers/mlp_norm/scale': ((2, 32), (None, 'fsdp')),
    'layers/attn/query/kernel': ((2, 32, 4, 8), (None, 'fsdp', 'tensor', None)),
    'layers/attn/key/kernel': ((2, 32, 4, 8), (None, 'fsdp', 'tensor', None)),
    'layers/attn/value/kernel': ((2, 32, 4, 8), (None, 'fsdp', 'tensor', None)),
    'layers/attn/out/kernel': ((2, 4, 8, 32), (None, 'tensor', None, 'fsdp')),
    'layers/mlp/gate/kernel': ((2, 32, 64), (None, 'fsdp', 'tensor')),
    'layers/mlp/up/kernel': ((2, 32, 64), (None, 'fsdp', 'tensor')),
    'layers/mlp/down/kernel': ((2, 64, 32), (None, 'tensor', 'fsdp')),
}


def _flat(tree) -> dict:
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _spec(arr) -> tuple:
  spec = tuple(arr.sharding.spec)
  return spec + (None,) * (arr.ndim - len(spec))


@pytest.fixture(scope='module')
def sharded_run(tmp_path_factory, eight_devices, baseline_overrides, helpers):
  """The baseline config on all 8 devices as data=2 x fsdp=2 x tensor=2 (and its stdout)."""
  config = helpers.small_toto_config({**baseline_overrides, **MESH_2x2x2})
  workdir = tmp_path_factory.mktemp('sharded_2x2x2')
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    summary = train_lib.train(config, str(workdir))
  assert summary['step'] == config.train.total_steps
  return workdir, summary, out.getvalue()


def test_8_device_losses_match_1_device(sharded_run, baseline_run, helpers):
  workdir, _, _ = sharded_run
  sharded, single = helpers.train_losses(workdir), baseline_run.losses
  assert sorted(sharded) == sorted(single) == list(range(1, 9))
  np.testing.assert_allclose([sharded[s] for s in range(1, 9)],
                             [single[s] for s in range(1, 9)], rtol=1e-4, atol=0)
  # The eval hook sees the same numbers through the sharded eval step.
  evals = lambda recs: {r['step']: r['eval/loss'] for r in recs if 'eval/loss' in r}
  from launch import metrics as metrics_lib
  sharded_eval, single_eval = evals(metrics_lib.read_metrics(str(workdir))), evals(
      baseline_run.records)
  assert sorted(sharded_eval) == sorted(single_eval) == [4, 8]
  for step in (4, 8):
    np.testing.assert_allclose(sharded_eval[step], single_eval[step], rtol=1e-4)


def test_8_device_params_match_1_device(sharded_run, baseline_run, helpers):
  _, summary, _ = sharded_run
  helpers.assert_trees_close(summary['final_params'], baseline_run.params, rtol=1e-4, atol=2e-6)


def test_params_are_sharded_as_the_rules_say(sharded_run, eight_devices):
  _, summary, _ = sharded_run
  params = _flat(summary['final_params'])
  assert sorted(params) == sorted(EXPECTED_LAYOUT)
  for name, (shape, spec) in EXPECTED_LAYOUT.items():
    arr = params[name]
    assert arr.shape == shape, name
    assert _spec(arr) == spec, f'{name}: {arr.sharding.spec}'
    mesh = arr.sharding.mesh
    assert dict(mesh.shape) == SIZES_2x2x2, name
    # Every device holds exactly one shard of the expected (divided) shape ...
    shard_shape = tuple(n // (SIZES_2x2x2[a] if a else 1) for n, a in zip(shape, spec))
    shards = arr.addressable_shards
    assert sorted(s.device.id for s in shards) == sorted(d.id for d in eight_devices), name
    assert all(s.data.shape == shard_shape for s in shards), (
        name, [s.data.shape for s in shards], shard_shape)
    # ... the shards tile the whole array, each distinct block replicated over the unused axes.
    ways = math.prod(SIZES_2x2x2[a] for a in spec if a)
    blocks = {tuple((i.start, i.stop) for i in s.index) for s in shards}
    assert len(blocks) == ways, name
    full = np.asarray(arr)
    for s in shards:
      np.testing.assert_array_equal(np.asarray(s.data), full[s.index], err_msg=name)


def test_sharded_run_reports_its_mesh(sharded_run):
  _, summary, stdout = sharded_run
  assert 'mesh data=2 x fsdp=2 x tensor=2 (8 cpu devices' in stdout
  assert 'global batch 8 = 2 x 4' in stdout
  assert summary['start_step'] == 0 and not summary.get('preempted')


# ------------------------------------------------------------------------------------------------
# Mesh helpers
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('sizes, total, expected', [
    ({'data': 1, 'fsdp': -1, 'tensor': 1}, 8, (1, 8, 1)),
    ({'data': 1, 'fsdp': -1, 'tensor': 2}, 8, (1, 4, 2)),
    ({'data': -1, 'fsdp': 2, 'tensor': 2}, 8, (2, 2, 2)),
    ({'data': 2, 'fsdp': 2, 'tensor': 2}, 8, (2, 2, 2)),
    ({'data': 1, 'fsdp': -1, 'tensor': 1}, 1, (1, 1, 1)),
    ({'data': 4, 'fsdp': -1, 'tensor': 2}, 8, (4, 1, 2)),
])
def test_resolve_axis_sizes(sizes, total, expected):
  assert shard_lib.resolve_axis_sizes(sizes, total, 'mesh.ici') == expected


@pytest.mark.parametrize('sizes, total, match', [
    ({'data': -1, 'fsdp': -1, 'tensor': 1}, 8, r'mesh\.ici: at most one axis may be -1'),
    ({'data': -1, 'fsdp': -1, 'tensor': -1}, 8, r'mesh\.ici: at most one axis may be -1'),
    ({'data': 2, 'fsdp': 2, 'tensor': 1}, 8, r'mesh\.ici: axes multiply to 4 but 8 devices'),
    ({'data': 2, 'fsdp': 4, 'tensor': 2}, 8, r'mesh\.ici: axes multiply to 16 but 8 devices'),
    ({'data': 3, 'fsdp': -1, 'tensor': 1}, 8, r'mesh\.ici: the fixed axes multiply to 3'),
    ({'data': 0, 'fsdp': -1, 'tensor': 1}, 8, r'mesh\.ici\.data must be a positive size or -1'),
    ({'data': 1, 'fsdp': -1, 'tensor': -2}, 8, r'mesh\.ici\.tensor must be a positive size'),
])
def test_resolve_axis_sizes_errors(sizes, total, match):
  with pytest.raises(ConfigError, match=match):
    shard_lib.resolve_axis_sizes(sizes, total, 'mesh.ici')


def test_mesh_shape_ici_and_dcn(small_toto_config):
  config = small_toto_config({'mesh.ici': (2, -1, 2)})
  assert shard_lib.mesh_shape(config.mesh, 8) == ((2, 2, 2), (1, 1, 1))
  config = small_toto_config({'mesh.dcn': (2, 1, 1)})
  with pytest.raises(ConfigError, match=r'mesh\.dcn: axes multiply to 2 but 1 devices'):
    shard_lib.mesh_shape(config.mesh, 8)
  with pytest.raises(ConfigError, match='do not split evenly into 3 slices'):
    shard_lib.mesh_shape(config.mesh, 8, num_slices=3)


def test_make_mesh_on_all_devices_and_on_a_subset(small_toto_config, eight_devices):
  mesh = shard_lib.make_mesh(small_toto_config({'mesh.ici': (2, 2, 2)}).mesh)
  assert isinstance(mesh, Mesh)
  assert mesh.axis_names == shard_lib.MESH_AXES
  assert dict(mesh.shape) == SIZES_2x2x2
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in eight_devices)

  subset = eight_devices[2:6]
  mesh = shard_lib.make_mesh(small_toto_config({'mesh.ici': (1, -1, 2)}).mesh, subset)
  assert dict(mesh.shape) == {'data': 1, 'fsdp': 2, 'tensor': 2}
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in subset)

  mesh = shard_lib.make_mesh(small_toto_config().mesh, eight_devices[:1])
  assert dict(mesh.shape) == {'data': 1, 'fsdp': 1, 'tensor': 1}
  assert shard_lib.describe(mesh) == 'data=1 x fsdp=1 x tensor=1'

  with pytest.raises(ConfigError, match=r'mesh\.ici'):
    shard_lib.make_mesh(small_toto_config({'mesh.ici': (2, 2, 2)}).mesh, eight_devices[:4])


def test_rules_and_axis_sizes(small_toto_config):
  config = small_toto_config()
  rules = shard_lib.rules_of(config)
  assert dict(rules)['act_batch'] == ('data', 'fsdp')
  assert dict(rules)['embed'] == 'fsdp'
  mesh = shard_lib.make_mesh(small_toto_config({'mesh.ici': (2, 2, 2)}).mesh)
  assert shard_lib.axis_size(mesh, 'act_batch', rules) == 4
  assert shard_lib.axis_size(mesh, 'vocab', rules) == 2
  assert shard_lib.axis_size(mesh, 'layers', rules) == 1
  sharding = shard_lib.logical_sharding(mesh, rules, ('act_batch', None))
  assert tuple(sharding.spec)[0] == ('data', 'fsdp')
  assert sharding.shard_shape((8, 3)) == (2, 3)


@pytest.mark.parametrize('rule, match', [
    (['mlp', 'model'], r"sharding_rules\[\d+\] \('mlp'\) names mesh axis 'model'"),
    (['act_batch', ['data', 'expert']], r"sharding_rules\[\d+\] \('act_batch'\) names mesh axis "
                                        r"'expert'"),
    (['mlp'], r'sharding_rules\[\d+\] must be \[logical_name, mesh_axes\]'),
])
def test_rules_reject_unknown_mesh_axes(small_toto_config, rule, match):
  config = small_toto_config()
  config.sharding_rules = list(config.sharding_rules) + [rule]
  with pytest.raises(ConfigError, match=match):
    shard_lib.rules_of(config)
