"""The IPD representation and the zero-initialised feature branch (issue 13 part 2)."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spatialsep_jax.models.sudormrf import SuDORMRF

TINY = dict(num_sources=2, num_input_channels=2, enc_basis=16, bottleneck=8, num_blocks=2,
            upsampling_depth=2, n_fft=32)
NUM_SAMPLES = 400


def _mixture(seed=0):
  return jax.random.normal(jax.random.key(seed), (2, NUM_SAMPLES, 2)) * 0.1


def _flat(params):
  return {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(params).items()}


def _init(model, seed=1):
  return model.init(jax.random.key(seed), _mixture())["params"]


def test_zero_branch_starts_from_the_feature_free_model():
  bilateral = SuDORMRF(**TINY)
  zero = SuDORMRF(**TINY, features=("ipd",), feature_init="zero")
  params_bi, params_zero = _flat(_init(bilateral)), _flat(_init(zero))
  # Same parameters, same shapes and (same seed) same initial values, plus the projection.
  extra = sorted(set(params_zero) - set(params_bi))
  assert extra == ["feature_proj/bias", "feature_proj/kernel"]
  assert set(params_bi) <= set(params_zero)
  for name, value in params_bi.items():
    np.testing.assert_array_equal(params_zero[name], value, err_msg=name)
  assert params_zero["feature_proj/kernel"].shape == (TINY["n_fft"] // 2 + 1, TINY["bottleneck"])
  assert not np.any(params_zero["feature_proj/kernel"]) and not np.any(params_zero["feature_proj/bias"])
  mixture = _mixture(3)
  out_bi = bilateral.apply({"params": _init(bilateral)}, mixture)
  out_zero = zero.apply({"params": _init(zero)}, mixture)
  np.testing.assert_array_equal(np.asarray(out_zero), np.asarray(out_bi))


@pytest.mark.parametrize("kinds,norm", [(("ipd",), "joint"), (("ipd_cossin",), "separate")])
def test_zero_branch_equals_any_feature_free_model_given_its_parameters(kinds, norm):
  """Not only at one seed: the feature-free model's trained-looking parameters plus a zero
  projection (and a fresh feature norm) compute exactly that model's output."""
  bilateral = SuDORMRF(**TINY)
  zero = SuDORMRF(**TINY, features=kinds, feature_init="zero", feature_norm=norm)
  params = flax.traverse_util.flatten_dict(_init(bilateral, seed=7))
  extra = {k: v for k, v in flax.traverse_util.flatten_dict(_init(zero, seed=2)).items()
           if k[0] in ("feature_proj", "feature_norm")}
  params = flax.traverse_util.unflatten_dict({**params, **extra})
  mixture = _mixture(5)
  np.testing.assert_array_equal(
      np.asarray(zero.apply({"params": params}, mixture)),
      np.asarray(bilateral.apply({"params": params}, mixture)))


def test_zero_branch_gets_a_gradient_and_then_changes_the_output():
  zero = SuDORMRF(**TINY, features=("ipd_cossin",), feature_init="zero")
  params = _init(zero)
  mixture = _mixture(4)

  def loss(p):
    return jnp.mean(zero.apply({"params": p}, mixture)[:, 0] * mixture[..., 0])

  grads = jax.grad(loss)(params)
  assert float(jnp.abs(grads["feature_proj"]["kernel"]).sum()) > 0
  moved = jax.tree_util.tree_map(lambda p, g: p - 1e-1 * g, params, grads)
  assert not np.allclose(np.asarray(zero.apply({"params": moved}, mixture)),
                         np.asarray(SuDORMRF(**TINY).apply({"params": moved}, mixture)))


def test_default_options_keep_the_study_path():
  """feature_init='default' is the study's concatenation: block channels E + F, no
  projection, and the same parameters and output as a model built without the field."""
  implicit = SuDORMRF(**TINY, features=("ipd",))
  explicit = SuDORMRF(**TINY, features=("ipd",), feature_init="default")
  f = TINY["n_fft"] // 2 + 1
  assert implicit.block_channels == TINY["enc_basis"] + f
  params = _init(implicit)
  assert "feature_proj" not in params
  assert params["input_norm"]["gamma" if "gamma" in params["input_norm"] else
                              next(iter(params["input_norm"]))].shape[-1] == TINY["enc_basis"] + f
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, _init(explicit))
  mixture = _mixture(6)
  np.testing.assert_array_equal(np.asarray(implicit.apply({"params": params}, mixture)),
                                np.asarray(explicit.apply({"params": params}, mixture)))
  cossin = SuDORMRF(**TINY, features=("ipd_cossin",))
  assert cossin.block_channels == TINY["enc_basis"] + 2 * f


def test_zero_branch_refuses_attention_fusion():
  with pytest.raises(ValueError, match="feature_init"):
    SuDORMRF(**TINY, features=("ipd",), fusion="attention", feature_init="zero").init(
        jax.random.key(0), _mixture())
  with pytest.raises(ValueError, match="feature_init"):
    SuDORMRF(**TINY, features=("ipd",), feature_init="half").init(jax.random.key(0), _mixture())


def test_config_tokens():
  from spatialsep_jax.configs import bilateral, ipd
  config = ipd.get_config("smoke,cossin,zeroinit")
  assert config.name == "ipd_cossin_zeroinit"
  assert tuple(config.model.features) == ("ipd_cossin",)
  assert config.model.feature_init == "zero"
  assert "feature_init" not in ipd.get_config("smoke").model  # fingerprints unchanged
  assert tuple(ipd.get_config("gpu,cossin").model.features) == ("ipd_cossin",)
  with pytest.raises(ValueError, match="cossin"):
    bilateral.get_config("smoke,cossin")
  with pytest.raises(ValueError, match="zeroinit"):
    bilateral.get_config("smoke,zeroinit")
