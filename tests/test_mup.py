"""muP (toto_jax.mup): identity at the base width, the hooks' exact effect, learning-rate
multipliers, width-scaled init and the coordinate check."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toto_jax import mup
from toto_jax.model import Toto
from toto_jax.task import TotoTask


def _model_cfg(small_toto_config, width: int = 32, arch: str = 'llama', base: int | None = None):
  config = small_toto_config(model__arch=arch)
  if base:
    config = mup.enable(config, base)
  config.model = mup.with_width(config.model, width)
  return config


def _tokens(vocab: int, batch: int = 2, length: int = 12) -> jax.Array:
  return jnp.asarray(np.random.default_rng(0).integers(1, vocab, (batch, length)), jnp.int32)


@pytest.mark.parametrize('arch', ['llama', 'gpt2'])
def test_base_width_is_the_standard_parameterisation(small_toto_config, arch):
  sp = _model_cfg(small_toto_config, 32, arch)
  mp = _model_cfg(small_toto_config, 32, arch, base=32)
  tokens = _tokens(sp.model.vocab_size)
  params = jax.jit(Toto(sp.model).init)(jax.random.key(1), tokens)
  params_mup = jax.jit(Toto(mp.model).init)(jax.random.key(1), tokens)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, params_mup)  # same init too
  np.testing.assert_array_equal(jax.jit(Toto(sp.model).apply)(params, tokens),
                                jax.jit(Toto(mp.model).apply)(params, tokens))


def test_hooks_scale_queries_and_logits(small_toto_config):
  """At width 64 over base 32: muP(params) = SP(params with W_q x query_multiplier) / width_mult."""
  sp = _model_cfg(small_toto_config, 64)
  mp = _model_cfg(small_toto_config, 64, base=32)
  assert mup.width_mult(mp.model) == 2.0
  assert mup.query_multiplier(mp.model) == pytest.approx(np.sqrt(8 / 16))  # head dim 8 -> 16
  tokens = _tokens(sp.model.vocab_size)
  params = jax.tree_util.tree_map(np.asarray, mup.nn_unbox(
      jax.jit(Toto(sp.model).init)(jax.random.key(2), tokens)['params']))
  scaled = jax.tree_util.tree_map(lambda x: x, params)
  scaled['layers']['attn']['query']['kernel'] = (params['layers']['attn']['query']['kernel']
                                                 * mup.query_multiplier(mp.model))
  sp_apply = jax.jit(Toto(sp.model).apply)
  got = jax.jit(Toto(mp.model).apply)({'params': params}, tokens)
  want = sp_apply({'params': scaled}, tokens) / 2.0
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
  assert not np.allclose(got, sp_apply({'params': params}, tokens), atol=1e-3)


def test_init_scales_hidden_matrices_only(small_toto_config):
  cfg = _model_cfg(small_toto_config, 128, base=32)  # width_mult 4: hidden std 0.02 / 2
  params = mup.nn_unbox(jax.jit(TotoTask(cfg).init)(jax.random.key(3)))
  layers = params['layers']
  for kernel in (layers['attn']['query']['kernel'], layers['attn']['out']['kernel'],
                 layers['mlp']['gate']['kernel'], layers['mlp']['down']['kernel']):
    assert float(np.std(kernel)) == pytest.approx(0.01, rel=0.05)
  assert float(np.std(params['embed'])) == pytest.approx(0.02, rel=0.05)
  assert float(np.std(params['lm_head']['kernel'])) == pytest.approx(0.02, rel=0.05)
  np.testing.assert_array_equal(layers['attn_norm']['scale'], 1.0)


@pytest.mark.parametrize('arch', ['llama', 'gpt2'])
def test_lr_scales(small_toto_config, arch):
  cfg = _model_cfg(small_toto_config, 128, arch, base=32)
  task = TotoTask(cfg)
  abstract = mup.nn_unbox(jax.eval_shape(task.init, jax.random.key(0)))
  scales = task.lr_scales(abstract)
  flat = {jax.tree_util.keystr(p): float(s)
          for p, s in jax.tree_util.tree_leaves_with_path(scales)}
  assert len(flat) == len(jax.tree_util.tree_leaves(abstract))
  hidden = {k: v for k, v in flat.items() if k.startswith("['layers']") and k.endswith(
      "['kernel']")}
  assert len(hidden) == (6 if arch == 'gpt2' else 7)  # q k v out + up down (+ gate)
  assert set(hidden.values()) == {0.25}
  others = {k: v for k, v in flat.items() if k not in hidden}
  assert "['embed']" in others and "['lm_head']['kernel']" in others
  assert any(k.endswith("['bias']") for k in others) == (arch == 'gpt2')
  assert set(others.values()) == {1.0}
  # Without muP the task asks for no multipliers at all (the optimizer is unchanged).
  assert TotoTask(_model_cfg(small_toto_config, 128, arch)).lr_scales(abstract) is None


def test_missing_base_width_names_the_field(small_toto_config):
  cfg = _model_cfg(small_toto_config, 64, base=32)
  cfg.model.mup_base_width = 0
  with pytest.raises(ValueError, match='model.mup_base_width'):
    mup.width_mult(cfg.model)


def test_coord_check(small_toto_config):
  """After a few Adam steps at one learning rate, the last hidden state's scale grows with width
  under the standard parameterisation and stays put under muP."""
  sp = _model_cfg(small_toto_config, 32)
  mp = _model_cfg(small_toto_config, 32, base=32)
  widths = [32, 128]
  sp_check = mup.coord_check(sp.model, widths, steps=3, lr=1e-2)
  mp_check = mup.coord_check(mp.model, widths, steps=3, lr=1e-2)
  np.testing.assert_array_equal(sp_check['hidden'][0], mp_check['hidden'][0])  # base width
  sp_growth = sp_check['hidden'][1, -1] / sp_check['hidden'][0, -1]
  mp_growth = mp_check['hidden'][1, -1] / mp_check['hidden'][0, -1]
  assert sp_growth > 4.0, sp_check
  assert 0.7 < mp_growth < 1.4, mp_check
  # muP logits do not blow up with width either (they shrink at init: constant readout init
  # times 1/width_mult), while standard logits grow.
  assert mp_check['logits'][1, -1] <= 1.2 * mp_check['logits'][0, -1]
  assert sp_check['logits'][1, -1] > 1.5 * sp_check['logits'][0, -1]
