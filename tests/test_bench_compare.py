"""``python -m launch.bench compare``: variants of one config timed in turn in one process."""

import pytest

from configs import common, toto
from launch import bench


def test_variant_specs_parse_into_a_name_and_field_overrides():
  assert bench.parse_variant('as_is') == ('as_is', {})
  assert bench.parse_variant('remat: model.remat_policy=full; train.lr=1e-3') == (
      'remat', {'model.remat_policy': 'full', 'train.lr': '1e-3'})
  with pytest.raises(ValueError, match='is not FIELD=VALUE'):
    bench.parse_variant('remat:model.remat_policy')
  with pytest.raises(ValueError, match='give it a name'):
    bench.parse_variant(':model.dim=4')


def test_set_field_converts_to_the_field_type_and_names_bad_fields():
  config = toto.get_config('tiny')
  common.set_field(config, 'train.lr', '1e-3')
  common.set_field(config, 'model.mup', 'true')
  common.set_field(config, 'model.attention_impl', 'xla')  # an unset placeholder takes the string
  assert (config.train.lr, config.model.mup, config.model.attention_impl) == (1e-3, True, 'xla')
  with pytest.raises(KeyError, match="--variant v: model.dimm: the config has no field 'dimm'"):
    common.set_field(config, 'model.dimm', '4', source='--variant v:')
  with pytest.raises(KeyError, match="no field 'modle'"):
    common.set_field(config, 'modle.dim', '4')
  with pytest.raises(ValueError, match='model.num_layers: expected a int'):
    common.set_field(config, 'model.num_layers', 'four')


def test_compare_times_every_variant_each_round():
  config = toto.get_config('tiny')
  r = bench.compare_toto(config, ['as_is', 'remat:model.remat_policy=full'], seq_len=32, batch=8,
                         rounds=2, warmup=1)
  assert r['bench'] == 'toto_compare' and r['rounds'] == 2
  first, remat = r['variants']
  assert (first['name'], remat['name']) == ('as_is', 'remat')
  assert remat['overrides'] == {'model.remat_policy': 'full'}
  assert first['ratio_to_first_median'] == 1.0
  assert all(len(v['step_time_s_all']) == 2 and v['step_time_s_median'] > 0 for v in r['variants'])
  # Recomputing the layers in the backward pass does not change the step's loss.
  assert remat['first_loss'] == pytest.approx(first['first_loss'], rel=1e-5)
  assert 'remat' in bench.format_comparison(r)
  assert config.model.remat_policy == 'none'  # the caller's config is left as it was


def test_compare_needs_two_distinct_variants():
  with pytest.raises(ValueError, match='two or more variants with distinct names'):
    bench.compare_toto(toto.get_config('tiny'), ['a', 'a:model.dim=64'], 32, 8, 1, 1)
