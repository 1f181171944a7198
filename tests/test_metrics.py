"""ncc against NumPy's Pearson correlation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp as ji


def test_ncc_matches_numpy_corrcoef_batched():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 6, 7, 8))
    b = 0.5 * a + rng.normal(size=a.shape)
    got = np.asarray(ji.ncc(jnp.asarray(a), jnp.asarray(b), batch_dims=1))
    want = [np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    jitted = jax.jit(ji.ncc, static_argnames="batch_dims")(
        jnp.asarray(a), jnp.asarray(b), batch_dims=1
    )
    np.testing.assert_allclose(np.asarray(jitted), got, rtol=1e-6)


def test_ncc_invariances_and_mask():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(10, 10))
    assert float(ji.ncc(jnp.asarray(a), jnp.asarray(3 * a + 2))) == pytest.approx(1.0, abs=1e-6)
    assert float(ji.ncc(jnp.asarray(a), jnp.asarray(-a))) == pytest.approx(-1.0, abs=1e-6)
    mask = rng.uniform(size=a.shape) > 0.5
    b = rng.normal(size=a.shape)
    want = np.corrcoef(a[mask], b[mask])[0, 1]
    assert float(ji.ncc(jnp.asarray(a), jnp.asarray(b), mask=jnp.asarray(mask))) == pytest.approx(
        want, rel=1e-5
    )


def test_ncc_constant_map_is_nan_and_shape_errors():
    assert np.isnan(float(ji.ncc(jnp.ones((4, 4)), jnp.arange(16.0).reshape(4, 4))))
    with pytest.raises(ValueError, match="shapes differ"):
        ji.ncc(jnp.ones((4, 4)), jnp.ones((4, 5)))
    with pytest.raises(ValueError, match="batch_dims"):
        ji.ncc(jnp.ones((4, 4)), jnp.ones((4, 4)), batch_dims=2)
