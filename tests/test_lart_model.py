"""LART model: shapes, logical axis names, the masking rules of DESIGN section 7, config checks."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import lart as lart_config
from lart_jax import inference
from lart_jax.model import Lart, positions_2d, random_token_mask
from lart_jax.task import LartTask
from launch.sharding import ConfigError

B, T, N = 2, 6, 3


def _model_config(appearance_dim: int = 0, pseudo_classes: int = 0):
  c = lart_config.get_config('tiny')
  m = c.model
  m.dim, m.num_heads, m.num_layers, m.mlp_dim, m.embed_hidden = 16, 2, 2, 32, 16
  m.appearance_dim = appearance_dim
  m.pseudo_classes = pseudo_classes
  m.dropout = 0.0
  return m


def _inputs(da: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  pose = rng.standard_normal((B, T, N, 229)).astype(np.float32)
  app = rng.standard_normal((B, T, N, da)).astype(np.float32)
  detected = rng.random((B, T, N)) < 0.7
  detected[:, 0, 0] = True
  return pose, app, detected


def _init(m, da):
  pose, app, det = _inputs(da)
  boxed = Lart(m).init(jax.random.key(0), pose, app, det)
  return boxed, nn.unbox(boxed)['params']


@pytest.mark.parametrize('da', [0, 8])
def test_shapes_and_logical_axes_on_every_parameter(da):
  m = _model_config(da, pseudo_classes=80)
  boxed, params = _init(m, da)
  pose, app, det = _inputs(da)
  out = Lart(m).apply({'params': params}, pose, app, det)
  assert out['logits'].shape == (B, T, N, 60) and out['logits'].dtype == jnp.float32
  assert out['pseudo_logits'].shape == (B, T, N, 80)
  assert ('appearance_mlp' in params) == bool(da)
  leaves = jax.tree_util.tree_leaves(boxed['params'], is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
  assert params['layers']['attn']['query']['kernel'].shape[0] == m.num_layers


def test_positions_2d_split_time_and_track():
  p = positions_2d(5, 3, 16)
  assert p.shape == (5, 3, 16)
  np.testing.assert_array_equal(p[:, 0, :8], p[:, 2, :8])   # time half shared by people
  np.testing.assert_array_equal(p[0, :, 8:], p[4, :, 8:])   # track half shared over time
  assert not np.allclose(p[0, 0], p[0, 1]) and not np.allclose(p[0, 0], p[1, 0])


def test_hidden_tokens_do_not_change_other_outputs():
  """An undetected or masked token's input never reaches another token; a visible one does."""
  da = 8
  m = _model_config(da)
  _, params = _init(m, da)
  pose, app, det = _inputs(da)
  masked = np.zeros_like(det)
  masked[0, 2, 1] = det[0, 2, 1] = True           # a masked (detected) token
  det[0, 4, 2] = False                             # an undetected token
  det[0, 1, 0] = True                              # a visible token
  apply = jax.jit(lambda p, a, d, mk: Lart(m).apply({'params': params}, p, a, d, mk)['logits'])
  base = np.asarray(apply(pose, app, det, masked))
  for (t, n) in ((2, 1), (4, 2)):
    pose2, app2 = pose.copy(), app.copy()
    pose2[0, t, n] += 5.0
    app2[0, t, n] += 5.0
    out = np.asarray(apply(pose2, app2, det, masked))
    np.testing.assert_array_equal(out, base)  # nobody sees it, not even itself
  pose2 = pose.copy()
  pose2[0, 1, 0] += 5.0
  out = np.asarray(apply(pose2, app, det, masked))
  other = np.ones((T, N), bool)
  other[1, 0] = False
  # It is attended to: every other token of its example moves (little, at initialisation).
  assert (np.abs(out[0][other] - base[0][other]).max(-1) > 0).all()
  np.testing.assert_array_equal(out[1], base[1])                   # examples are independent


def test_hidden_tokens_still_get_predictions_from_context():
  m = _model_config()
  _, params = _init(m, 0)
  pose, app, det = _inputs(0)
  det[0, 3, 0] = False
  apply = lambda p: np.asarray(Lart(m).apply({'params': params}, p, app, det)['logits'])
  base = apply(pose)
  pose2 = pose.copy()
  pose2[0, det[0]] += 1.0                          # change every visible token
  assert (apply(pose2)[0, 3, 0] != base[0, 3, 0]).all()


def test_random_token_mask_only_detected_and_at_the_ratio():
  det = jnp.asarray(np.random.default_rng(0).random((64, 32, 5)) < 0.6)
  mk = np.asarray(random_token_mask(jax.random.key(0), det, 0.4))
  assert not (mk & ~np.asarray(det)).any()
  assert abs(mk.sum() / np.asarray(det).sum() - 0.4) < 0.03
  assert not np.asarray(random_token_mask(jax.random.key(0), det, 0.0)).any()


def test_config_variants_and_options():
  c = lart_config.get_config('pose_appearance')
  assert (c.model.dim, c.model.num_layers, c.model.num_heads) == (512, 16, 16)
  assert c.model.appearance_dim == c.data.appearance_dim == 64
  assert c.data.max_frames == 128 and c.data.num_people == 5
  c.data.appearance_dim = 1152                     # linked: the model follows the data
  assert c.model.appearance_dim == 1152
  assert lart_config.get_config('pose').model.appearance_dim == 0
  assert lart_config.get_config('tiny,n1').data.num_people == 1
  ft = lart_config.get_config('pose,finetune')
  assert (ft.model.mask_ratio, ft.model.drop_path, ft.train.layer_decay) == (0.0, 0.1, 0.9)
  assert lart_config.get_config('pose,pretrain').loss.gt_weight == 0.0
  with pytest.raises(ValueError, match='unknown option'):
    lart_config.get_config('tiny,n0x')
  with pytest.raises(ValueError, match='unknown variant'):
    lart_config.get_config('huge')


@pytest.mark.parametrize('field,value,match', [
    ('model.appearance_dim', 5, 'model.appearance_dim'),
    ('data.max_frames', 200, 'data.max_frames'),
    ('data.num_people', 0, 'data.num_people'),
    ('model.mask_ratio', 1.0, 'model.mask_ratio'),
    ('model.pseudo_classes', 7, 'model.pseudo_classes'),
    ('loss.gt_weight', -1.0, 'loss'),
    ('model.attention_impl', 'blockwise', "attention_impl='blockwise' is causal-only"),
    ('model.attention_impl', 'fused_cpu', "attention_impl='fused_cpu' is causal-only"),
])
def test_validate_names_the_field(field, value, match):
  c = lart_config.get_config('tiny')
  section, key = field.split('.')
  c = ml_collections.ConfigDict(c.to_dict())  # plain values: model and data no longer linked
  c[section][key] = value
  with pytest.raises(ConfigError, match=match):
    LartTask(c).validate()


def test_smoothing_window_is_centred_and_clipped():
  s = np.arange(20, dtype=np.float32)[:, None]
  assert inference.smooth_at(s, 10, 12)[0] == pytest.approx(np.arange(4, 16).mean())
  assert inference.smooth_at(s, 0, 12)[0] == pytest.approx(np.arange(0, 6).mean())
  assert inference.smooth_at(s, 19, 12)[0] == pytest.approx(np.arange(13, 20).mean())
