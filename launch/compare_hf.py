r"""Checks ``toto_jax.hf`` against the real ``transformers`` LlamaForCausalLM (needs torch).

  python -m launch.compare_hf [--layers 2 --hidden 128 --heads 8 --kv_heads 2 --vocab 1000]

Builds a randomly initialised Hugging Face model, converts its state dict with
``params_from_hf``, runs both on the same tokens and prints one JSON line with the largest
absolute and relative logit differences; then exports a Toto model with ``params_to_hf``, loads it
into ``transformers`` and compares again. torch and transformers are optional: the test suite uses
a NumPy reference of the same computation instead.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--layers', type=int, default=2)
  parser.add_argument('--hidden', type=int, default=128)
  parser.add_argument('--heads', type=int, default=8)
  parser.add_argument('--kv_heads', type=int, default=2)
  parser.add_argument('--intermediate', type=int, default=352)
  parser.add_argument('--vocab', type=int, default=1000)
  parser.add_argument('--rope_theta', type=float, default=50000.0)
  parser.add_argument('--length', type=int, default=48)
  args = parser.parse_args()

  import jax
  import jax.numpy as jnp
  import torch
  import transformers

  from toto_jax import hf
  from toto_jax.model import Toto

  jax.config.update('jax_default_matmul_precision', 'highest')
  torch.backends.cuda.matmul.allow_tf32 = False
  hf_cfg = transformers.LlamaConfig(
      vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
      num_hidden_layers=args.layers, num_attention_heads=args.heads,
      num_key_value_heads=args.kv_heads, rope_theta=args.rope_theta, rms_norm_eps=1e-5,
      max_position_embeddings=512, tie_word_embeddings=False)
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(hf_cfg).eval().float()
  tokens = np.random.default_rng(0).integers(0, args.vocab, (2, args.length))

  def hf_logits(m):
    with torch.no_grad():
      return m(torch.as_tensor(tokens)).logits.float().numpy()

  def compare(a, b):
    diff = np.abs(a - b)
    return {'max_abs': float(diff.max()), 'max_rel': float(diff.max() / np.abs(b).max())}

  state = {k: v.float().numpy() for k, v in model.state_dict().items()}
  cfg = hf.config_from_hf(hf_cfg.to_dict())
  params = hf.params_from_hf(state, cfg)
  ours = np.asarray(jax.jit(Toto(cfg).apply)({'params': params}, jnp.asarray(tokens, jnp.int32)))
  result = {'transformers': transformers.__version__, 'torch': torch.__version__,
            'import': compare(ours[..., :args.vocab], hf_logits(model))}

  init = Toto(cfg).init(jax.random.key(1), jnp.asarray(tokens, jnp.int32))['params']
  exported = hf.params_to_hf(init, cfg)
  model2 = transformers.LlamaForCausalLM(hf_cfg).eval().float()
  missing = model2.load_state_dict({k: torch.as_tensor(v) for k, v in exported.items()},
                                   strict=False)
  ours2 = np.asarray(jax.jit(Toto(cfg).apply)({'params': hf.params_from_hf(exported, cfg)},
                                              jnp.asarray(tokens, jnp.int32)))
  result['export'] = compare(ours2[..., :args.vocab], hf_logits(model2))
  result['export_missing_keys'] = [k for k in missing.missing_keys if 'inv_freq' not in k]
  result['ok'] = (result['import']['max_rel'] < 1e-4 and result['export']['max_rel'] < 1e-4
                  and not result['export_missing_keys'])
  print(json.dumps(result))


if __name__ == '__main__':
  main()
