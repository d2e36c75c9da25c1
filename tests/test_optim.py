"""Per-parameter learning rates (layer-wise decay, muP) and starting a run from another's params."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from launch import optim
from launch import train as train_lib


def _train_cfg(**kw):
  c = ml_collections.ConfigDict(dict(lr=1e-2, warmup_steps=0, total_steps=10, end_lr_ratio=1.0,
                                     b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=0.0))
  c.update(kw)
  return c


def test_layer_decay_scales_follow_depth():
  params = {'embed': np.zeros((8, 4)), 'layers': {'w': np.zeros((3, 4, 4)), 'scale': np.zeros((3, 4))},
            'head': {'kernel': np.zeros((4, 2))}}
  scales = optim.layer_decay_scales(params, 0.5, 3, head=('head',))
  np.testing.assert_allclose(scales['layers']['w'][:, 0, 0], [0.125, 0.25, 0.5])
  assert scales['layers']['scale'].shape == (3, 1)
  assert scales['embed'] == pytest.approx(0.0625)
  assert scales['head']['kernel'] == 1.0


def test_layer_decay_scales_of_unrolled_layers_are_the_stacked_ones():
  stacked = {'layers': {'w': np.zeros((3, 4, 4))}, 'head': {'kernel': np.zeros((4, 2))}}
  unrolled = {'layers': {str(i): {'w': np.zeros((4, 4))} for i in range(3)},
              'head': {'kernel': np.zeros((4, 2))}}
  expected = optim.layer_decay_scales(stacked, 0.5, 3, head=('head',))['layers']['w'][:, 0, 0]
  scales = optim.layer_decay_scales(unrolled, 0.5, 3, head=('head',))
  np.testing.assert_allclose([scales['layers'][str(i)]['w'] for i in range(3)], expected)


def test_scaled_update_equals_a_smaller_learning_rate():
  """AdamW with multiplier s on a leaf moves it exactly as AdamW at lr * s (decay included)."""
  params = {'a': jnp.ones((3, 2)), 'b': jnp.full((2,), 2.0)}
  grads = {'a': jnp.arange(6.0).reshape(3, 2) - 2.0, 'b': jnp.array([0.5, -1.0])}
  scales = {'a': np.array([[1.0], [0.5], [0.25]], np.float32), 'b': np.float32(0.1)}
  tx = optim.make_optimizer(_train_cfg(), scales)
  updates, _ = tx.update(grads, tx.init(params), params)
  for name, lr_scale in (('a', scales['a']), ('b', scales['b'])):
    ref_tx = optim.make_optimizer(_train_cfg(lr=1e-2))
    ref, _ = ref_tx.update(grads, ref_tx.init(params), params)
    np.testing.assert_allclose(updates[name], ref[name] * lr_scale, rtol=1e-6)


def test_init_from_copies_matching_params_and_names_mismatches(baseline_run, small_toto_config,
                                                               eight_devices, tmp_path):
  from launch import checkpoint as ckpt_lib
  loaded = ckpt_lib.load(baseline_run.workdir)['params']
  fresh = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), loaded)
  params, report = train_lib.init_from_pretrained(fresh, baseline_run.workdir)
  assert report['copied'] == len(jax.tree_util.tree_leaves(loaded)) and not report['fresh']
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(params), loaded)

  # Nested under a prefix (a fine-tuning model wrapping the backbone), with a fresh head beside.
  wrapped = {'backbone': fresh, 'probe': {'kernel': jnp.zeros((4, 3))}}
  params, report = train_lib.init_from_pretrained(wrapped, baseline_run.workdir,
                                                  prefix='backbone')
  assert report['fresh'] == ['probe/kernel']
  np.testing.assert_array_equal(params['backbone']['embed'], loaded['embed'])

  bad = dict(fresh, embed=jnp.zeros((3, 3)))
  with pytest.raises(train_lib.ConfigError, match="'embed' has shape"):
    train_lib.init_from_pretrained(bad, baseline_run.workdir)
  with pytest.raises(train_lib.ConfigError, match='no parameter'):
    train_lib.init_from_pretrained({'other': jnp.zeros(2)}, baseline_run.workdir)


def test_init_from_converts_the_layer_layout(baseline_run, eight_devices, tmp_path):
  """A run pre-trained with stacked layers (``scan_layers``) initialises an unrolled model, and
  back; resuming a workdir in the other layout is a config error naming the field."""
  from launch import checkpoint as ckpt_lib
  from toto_jax.model import unstack_layers
  loaded = ckpt_lib.load(baseline_run.workdir)['params']
  zeros = lambda tree: jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), tree)
  params, report = train_lib.init_from_pretrained(zeros(unstack_layers(loaded)),
                                                  baseline_run.workdir)
  assert not report['fresh'] and not report['unused']
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(params),
                         unstack_layers(loaded))
  wrapped = {'backbone': zeros(unstack_layers(loaded))}
  params, _ = train_lib.init_from_pretrained(wrapped, baseline_run.workdir, prefix='backbone')
  np.testing.assert_array_equal(params['backbone']['layers']['1']['mlp']['up']['kernel'],
                                loaded['layers']['mlp']['up']['kernel'][1])

  config = baseline_run.config.copy_and_resolve_references()
  train_lib.check_resumable_layout(baseline_run.workdir, config)  # same layout: fine
  config.model.scan_layers = False
  with pytest.raises(train_lib.ConfigError, match='model.scan_layers is False'):
    train_lib.check_resumable_layout(baseline_run.workdir, config)
  train_lib.check_resumable_layout(str(tmp_path), config)  # nothing saved: nothing to check


def test_run_started_from_a_pretrained_run_begins_at_its_loss(baseline_run, small_toto_config,
                                                              eight_devices, tmp_path):
  config = small_toto_config({'train.init_from': baseline_run.workdir, 'train.total_steps': 2,
                              'train.lr': 1e-9, 'train.warmup_steps': 0})
  train_lib.train(config, str(tmp_path), devices=eight_devices[:1])
  from launch import metrics as metrics_lib
  losses = [r['train/loss'] for r in metrics_lib.read_metrics(str(tmp_path)) if 'train/loss' in r]
  baseline_last = baseline_run.losses[max(baseline_run.losses)]
  # The baseline's final params at a near-zero lr: the loss starts near where the baseline ended,
  # far below a fresh model's ln(vocab).
  assert losses[0] < baseline_run.losses[1] - 0.05
  assert abs(losses[0] - baseline_last) < 0.3


@pytest.mark.parametrize('scale', [0.0, 0.1, 10.0])
def test_clip_by_global_norm_matches_optax(scale):
  """Below, above and at zero norm; with the norm recomputed or handed in by the train step."""
  grads = {'a': scale * (jnp.arange(6.0).reshape(3, 2) - 2.0), 'b': scale * jnp.array([0.5, -1.0])}
  expected, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
  clip = optim.clip_by_global_norm(1.0)
  for kwargs in ({}, {'grad_norm': optax.tree.norm(grads)}):
    clipped, state = clip.update(grads, clip.init(grads), **kwargs)
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), clipped,
                           expected)
    assert state == optax.EmptyState()


def test_optimizer_state_layout_is_unchanged_for_old_checkpoints():
  """The clipping step keeps optax's (empty) state, so checkpoints written with
  ``optax.clip_by_global_norm`` in the chain restore into the same tree."""
  params = {'w': jnp.ones((3, 2)), 'scale': jnp.ones((2,))}
  cfg = _train_cfg(clip_norm=1.0)
  ours = optim.make_optimizer(cfg).init(params)
  theirs = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
      optim.learning_rate_schedule(cfg), b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1,
      mask=optim.decay_mask)).init(params)
  assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(theirs)
