"""Mixed precision: ``dtype=jnp.bfloat16`` computes in bfloat16 with float32
parameters and a float32 cell state.

Documented tolerance (docs/variants.md, the modules' docstrings): over
T = 1,000 steps the bfloat16 outputs stay within BF16_ATOL of float32 ones.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from reference import assert_close, ref_lstm
from reference_variants import ref_variant_lstm

import jaxlstm as jl
from jaxlstm import precision

BF16_ATOL = 2e-2  # bfloat16 keeps 8 significant bits (eps 7.8e-3); the float32 cell state stops drift over time.
T = 1000


@pytest.fixture(scope="module")
def setup():
    x = jax.random.normal(jax.random.key(1), (2, T, 4))
    model = jl.LSTM(8, num_layers=2)
    variables = model.init(jax.random.key(0), x[:, :3])
    return x, variables


def test_bfloat16_module_keeps_float32_params_and_cell_state(setup):
    x, variables = setup
    carries, y = jl.LSTM(8, num_layers=2, dtype=jnp.bfloat16, return_carry=True).apply(variables, x)
    assert y.dtype == jnp.bfloat16
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    for layer in carries:
        assert layer[0].c.dtype == jnp.float32 and layer[0].h.dtype == jnp.bfloat16


def test_bfloat16_outputs_within_tolerance_of_float32_over_1000_steps(setup):
    x, variables = setup
    y32 = jl.LSTM(8, num_layers=2).apply(variables, x)
    ybf = jl.LSTM(8, num_layers=2, dtype=jnp.bfloat16).apply(variables, x)
    error = jnp.abs(ybf.astype(jnp.float32) - y32)
    assert float(jnp.max(error)) < BF16_ATOL
    # and it is really computing in bfloat16, not silently in float32:
    assert float(jnp.max(error)) > 1e-5


def test_bfloat16_gradients_are_finite_over_1000_steps(setup):
    x, variables = setup
    model = jl.LSTM(8, num_layers=2, dtype=jnp.bfloat16)

    def loss(v):
        return jnp.mean(model.apply(v, x).astype(jnp.float32) ** 2)

    grads = jax.jit(jax.grad(loss))(variables)
    leaves = jax.tree.leaves(grads)
    assert all(leaf.dtype == jnp.float32 for leaf in leaves)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)
    assert any(float(jnp.max(jnp.abs(leaf))) > 0 for leaf in leaves)


def test_core_with_bfloat16_inputs_defaults_to_a_float32_cell_state():
    params = jl.init_params(jax.random.key(0), 4, 8, dtype=jnp.bfloat16)
    final, hs = jl.lstm(params, jnp.ones((2, 5, 4), jnp.bfloat16))
    assert hs.dtype == jnp.bfloat16 and final.h.dtype == jnp.bfloat16 and final.c.dtype == jnp.float32


def test_a_bfloat16_carry_given_by_the_user_is_promoted_and_does_not_saturate():
    """c grows by ~1 per step (i, f, o and g saturated at 1): a bfloat16 c would stop at 256."""
    steps, hidden = 400, 2
    params = jl.init_params(jax.random.key(0), 1, hidden)
    params = params._replace(
        w_ih=jnp.zeros_like(params.w_ih), w_hh=jnp.zeros_like(params.w_hh), b=jnp.full((4 * hidden,), 20.0)
    )
    params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)  # a bfloat16 computation throughout
    xs = jnp.zeros((1, steps, 1), jnp.bfloat16)
    carry = jl.LSTMCarry(jnp.zeros((1, hidden), jnp.bfloat16), jnp.zeros((1, hidden), jnp.bfloat16))
    final, hs = jl.lstm(params, xs, carry)
    assert final.c.dtype == jnp.float32 and hs.dtype == jnp.bfloat16
    assert float(final.c[0, 0]) == pytest.approx(steps, rel=1e-3)  # float32 counts 400 steps; bfloat16 stops at 256


# ----------------------------------------------------------------------------- every path, narrow dtypes
#
# Each path runs in the narrow dtype (params and inputs rounded to it) and in float64 on the same
# rounded values; the narrow run must stay within its dtype's bound of the float64 one, for the outputs
# and for the gradients, and keep the policy's dtypes. The plain and variant paths are also checked
# against the NumPy reference loops (tests/reference.py, tests/reference_variants.py).

NARROW_ATOL = {jnp.bfloat16: 2e-2, jnp.float16: 3e-3}  # outputs; gradients: relative to the largest entry
GRAD_RTOL = {jnp.bfloat16: 3e-2, jnp.float16: 4e-3}
PB, PT, PD, PH = 2, 6, 3, 4
LENGTHS = np.array([6, 4])
MASK = np.array([[1, 1, 0, 1, 1, 1], [1, 0, 1, 1, 0, 0]], bool)
RESETS = np.array([[0, 0, 0, 1, 0, 0], [0, 1, 0, 0, 1, 0]], bool)
V_PEEP = jl.LSTMVariant(peepholes=True, proj_size=3, cell_clip=2.0, forget_bias=1.0)
V_LN = jl.LSTMVariant(layer_norm=True, cifg=True)
V_TRAIN = jl.LSTMVariant(input_dropout=0.2, recurrent_dropout=0.3, zoneout_h=0.2, zoneout_c=0.1)


def _paths():
    """``{name: (make_params(key, dtype), run(params, xs) -> hs)}``: every path the engine has."""
    plain = lambda key, dtype: jl.init_params(key, PD, PH, dtype=dtype)  # noqa: E731

    def variant(v):
        return lambda key, dtype: jax.tree.map(
            lambda a: a.astype(dtype), jl.init_variant_params(key, PD, PH, v)
        )

    def stack(**options):
        return lambda key, dtype: jl.init_stack(key, PD, PH, num_layers=2, dtype=dtype, **options)

    def lstm(**options):
        return lambda p, xs: jl.lstm(p, xs, **options)[1]

    lengths, mask, resets = jnp.asarray(LENGTHS), jnp.asarray(MASK), jnp.asarray(RESETS)
    return {
        "fused": (plain, lstm()),
        "autodiff": (plain, lstm(gradient="autodiff")),
        "checkpoint_every": (plain, lstm(checkpoint_every=4)),
        "seq_lengths.reverse": (plain, lstm(seq_lengths=lengths, reverse=True)),
        "mask.resets": (plain, lstm(mask=mask, resets=resets)),
        "peepholes.proj.clip.forget_bias": (variant(V_PEEP), lstm(variant=V_PEEP, seq_lengths=lengths)),
        "layer_norm.cifg.reverse": (variant(V_LN), lstm(variant=V_LN, reverse=True)),
        "layer_norm.autodiff": (variant(V_LN), lstm(variant=V_LN, gradient="autodiff")),
        "dropout.zoneout.training": (
            variant(V_TRAIN),
            lstm(variant=V_TRAIN, dropout_key=jax.random.key(3), deterministic=False),
        ),
        "stack.bidirectional": (
            stack(bidirectional=True),
            lambda p, xs: jl.stacked_lstm(p, xs, seq_lengths=lengths)[1],
        ),
    }


# Dropout masks drawn under jax.enable_x64 differ from those drawn without it: the training path's
# reference is its float32 run (the same masks), the others' their float64 run.
TRAINING = "dropout.zoneout.training"


@functools.cache
def _jitted(names: tuple[str, ...]):
    """One jitted ``_evaluate`` per set of paths, reused by both dtypes (the float64 and float32
    references then compile once)."""
    return jax.jit(functools.partial(_evaluate, names))


def _evaluate(names, params, xs):
    """``{path: (hs, grads of sum(hs · w) w.r.t. (params, xs))}`` for the paths ``names``."""
    paths = _paths()
    out = {}
    for name in names:
        run = paths[name][1]

        def loss(p, x, run=run):
            hs = run(p, x)
            weights = jnp.cos(jnp.arange(hs.size, dtype=jnp.float32)).reshape(hs.shape)
            return jnp.sum(hs.astype(jnp.float32) * weights), hs

        (_, hs), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params[name], xs)
        out[name] = (hs, grads)
    return out


@pytest.fixture(scope="module", params=[jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
def narrow_and_wide(request):
    """The narrow dtype, its params and inputs, every path's results in it and the references."""
    dtype, paths = request.param, _paths()
    keys = jax.random.split(jax.random.key(0), len(paths))
    params = {name: make(k, jnp.float32) for (name, (make, _)), k in zip(paths.items(), keys, strict=True)}
    params = jax.tree.map(lambda a: a.astype(dtype), params)  # the values every run shares
    xs = jax.random.normal(jax.random.key(1), (PB, PT, PD)).astype(dtype)
    narrow = _jitted(tuple(paths))(params, xs)
    reference = _jitted((TRAINING,))(*jax.tree.map(lambda a: a.astype(jnp.float32), (params, xs)))
    with jax.enable_x64(True):
        wide = jax.tree.map(lambda a: a.astype(jnp.float64), (params, xs))
        reference |= _jitted(tuple(n for n in paths if n != TRAINING))(*wide)
    return dtype, params, xs, narrow, jax.tree.map(np.asarray, reference)


@pytest.mark.parametrize("path", list(_paths()))
def test_every_path_in_a_narrow_dtype_follows_the_policy_and_stays_within_its_bound(narrow_and_wide, path):
    dtype, _, _, narrow, reference = narrow_and_wide
    hs, (d_params, d_xs) = narrow[path]
    hs_ref, (d_params_ref, d_xs_ref) = reference[path]
    assert hs.dtype == dtype and d_xs.dtype == dtype  # outputs and cotangents in the compute dtype
    assert all(g.dtype == dtype for g in jax.tree.leaves(d_params))
    error = np.max(np.abs(np.asarray(hs, np.float64) - hs_ref))
    assert error < NARROW_ATOL[dtype], f"{path}: max |hs - float64| = {error:.2e}"
    assert error > 0  # it really computed in the narrow dtype
    for got, want in zip(jax.tree.leaves((d_params, d_xs)), jax.tree.leaves((d_params_ref, d_xs_ref)), strict=True):
        scale = max(float(np.max(np.abs(want))), 1e-3)
        relative = float(np.max(np.abs(np.asarray(got, np.float64) - want))) / scale
        assert relative < GRAD_RTOL[dtype], f"{path}: gradient off by {relative:.2e} of its largest entry"


def test_narrow_plain_and_variant_outputs_match_the_numpy_loops(narrow_and_wide):
    dtype, params, xs, narrow, _ = narrow_and_wide
    as64 = lambda tree: jax.tree.map(lambda a: np.asarray(a, np.float64), tree)  # noqa: E731
    p, x = as64(params["seq_lengths.reverse"]), np.asarray(xs, np.float64)
    _, _, want = ref_lstm(p.w_ih, p.w_hh, p.b, x, seq_lengths=LENGTHS, reverse=True)
    got = np.asarray(narrow["seq_lengths.reverse"][0], np.float64)
    assert np.max(np.abs(got - want)) < NARROW_ATOL[dtype]
    p = as64(params["peepholes.proj.clip.forget_bias"])
    weights = {k: v for k, v in p._asdict().items() if v is not None}
    options = {"peepholes": True, "proj_size": 3, "cell_clip": 2.0, "forget_bias": 1.0}
    _, _, want = ref_variant_lstm(weights, x, options, seq_lengths=LENGTHS)
    got = np.asarray(narrow["peepholes.proj.clip.forget_bias"][0], np.float64)
    assert np.max(np.abs(got - want)) < NARROW_ATOL[dtype]


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
def test_narrow_linen_and_nnx_modules_match_their_float32_twins(dtype):
    x = jax.random.normal(jax.random.key(1), (PB, PT, PD))
    model = jl.LSTM(PH, dtype=dtype)  # stacks and directions: the paths above
    variables = model.init(jax.random.key(0), x)
    y = model.apply(variables, x)
    y32 = jl.LSTM(PH).apply(variables, x)
    assert y.dtype == dtype and 0 < float(jnp.max(jnp.abs(y.astype(jnp.float32) - y32))) < NARROW_ATOL[dtype]
    module = jl.nnx.LSTM(PD, PH, dtype=dtype, rngs=nnx.Rngs(0))
    module32 = jl.nnx.LSTM(PD, PH, rngs=nnx.Rngs(0))
    y, y32 = module(x), module32(x)
    assert y.dtype == dtype and 0 < float(jnp.max(jnp.abs(y.astype(jnp.float32) - y32))) < NARROW_ATOL[dtype]


# ----------------------------------------------------------------------------- narrow dots on CPUs without them
#
# On a CPU without dot instructions for the narrow dtype, ``precision.matmul`` runs the dot on the operands
# rounded to that dtype and widened to float32 (``precision.narrow_dots``). Each branch is forced here through
# ``JAXLSTM_NARROW_DOTS``; the automatic choice is checked against the CPU flags it reads.


@pytest.fixture(params=["native", "float32"])
def forced_dots(request, monkeypatch):
    """Force ``narrow_dots``' branch; traces cached under the other branch are dropped before and after."""
    monkeypatch.setenv(precision.NARROW_DOTS_ENV, request.param)
    precision.narrow_dots.cache_clear()
    jax.clear_caches()
    yield request.param
    precision.narrow_dots.cache_clear()
    jax.clear_caches()


def _dot_operand_dtypes(lowered_text: str) -> set[str]:
    """The element types of every dot_general's operands in a StableHLO module's text."""
    found = set()
    for line in lowered_text.splitlines():
        if "stablehlo.dot_general" in line:
            operands = line.rsplit(": (", 1)[1].split(") ->")[0]
            found |= set(re.findall(r"x([a-z]+[0-9]+)>", operands))
    return found


@pytest.mark.parametrize(
    ("dtype", "hlo_name"), [(jnp.bfloat16, "bf16"), (jnp.float16, "f16")], ids=["bfloat16", "float16"]
)
def test_matmul_runs_the_same_products_in_either_branch(forced_dots, dtype, hlo_name):
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((2, 3, 40)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((40, 5)), dtype)
    got = precision.matmul(a.astype(dtype), b, dtype)
    assert got.shape == (2, 3, 5) and got.dtype == jnp.float32
    # exact products of the narrow operands (8 or 11 significant bits), summed in float64
    assert_close(got, np.asarray(a.astype(dtype), np.float64) @ np.asarray(b, np.float64))
    # a float32 operand (the backward's dz): rounded for a narrow dot, used as it is by a float32 one
    a_used = a.astype(dtype) if forced_dots == "native" else a
    assert_close(precision.matmul(a, b, dtype), np.asarray(a_used, np.float64) @ np.asarray(b, np.float64))
    operands = _dot_operand_dtypes(jax.jit(lambda a, b: precision.matmul(a, b, dtype)).lower(a, b).as_text())
    assert operands == ({hlo_name} if forced_dots == "native" else {"f32"})


def test_float32_matmul_is_the_plain_product_in_either_branch(forced_dots):
    a = jax.random.normal(jax.random.key(0), (3, 7))
    b = jax.random.normal(jax.random.key(1), (7, 4))
    assert precision.dot_operand_dtype(jnp.float32) == np.float32
    assert bool(jnp.all(precision.matmul(a, b, jnp.float32) == a @ b))  # bit for bit


@pytest.mark.slow
def test_the_lstm_in_either_branch_keeps_the_policy_and_the_narrow_bound(forced_dots):
    """Forward and backward of ``jl.lstm`` in bfloat16: every dot's operands follow the branch, outputs and
    gradients keep their dtypes; outputs stay within bfloat16's bound of the NumPy loop on the same rounded
    values, gradients within it of the float32 run on them."""
    params = jl.init_params(jax.random.key(0), PD, PH, dtype=jnp.bfloat16)
    xs = jax.random.normal(jax.random.key(1), (PB, PT, PD)).astype(jnp.bfloat16)
    weights = jnp.cos(jnp.arange(PB * PT * PH, dtype=jnp.float32)).reshape(PB, PT, PH)

    def loss(p, x):
        hs = jl.lstm(p, x)[1]
        return jnp.sum(hs.astype(jnp.float32) * weights), hs

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    lowered = grad.lower(params, xs)
    assert _dot_operand_dtypes(lowered.as_text()) == ({"bf16"} if forced_dots == "native" else {"f32"})
    # the loops' buffers: bfloat16 kept as bits with narrow dots, float32 with float32 dots (no conversions)
    assert precision.narrow_storage(jnp.bfloat16) == (forced_dots == "native")
    assert ("xui16>" in lowered.as_text()) == (forced_dots == "native")
    (_, hs), (d_params, d_xs) = lowered.compile()(params, xs)
    assert hs.dtype == jnp.bfloat16 and d_xs.dtype == jnp.bfloat16
    assert all(g.dtype == jnp.bfloat16 for g in jax.tree.leaves(d_params))
    _, _, want = ref_lstm(*(np.asarray(a, np.float64) for a in (params.w_ih, params.w_hh, params.b, xs)))
    assert 0 < float(np.max(np.abs(np.asarray(hs, np.float64) - want))) < NARROW_ATOL[jnp.bfloat16]
    (_, _), grads32 = grad(*jax.tree.map(lambda a: a.astype(jnp.float32), (params, xs)))
    for got, ref in zip(jax.tree.leaves((d_params, d_xs)), jax.tree.leaves(grads32), strict=True):
        scale = max(float(jnp.max(jnp.abs(ref))), 1e-3)
        relative = float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(ref, np.float64)))) / scale
        assert relative < GRAD_RTOL[jnp.bfloat16], f"gradient off by {relative:.2e} of its largest entry"


def test_stored_values_are_the_compute_dtype_s_rounding_read_back_bit_for_bit(forced_dots):
    x = jax.random.normal(jax.random.key(0), (3, 5)) * 1e3
    for dtype in (jnp.bfloat16, jnp.float16):
        kept = precision.stored(x, dtype)
        narrow = precision.narrow_storage(dtype)
        assert kept.dtype == (jnp.uint16 if narrow else jnp.float32)
        back = precision.loaded(kept, dtype)
        assert back.dtype == (dtype if narrow else jnp.float32)
        want = x.astype(dtype) if narrow else x  # rounded once, to the nearest, as astype does
        np.testing.assert_array_equal(np.asarray(back, np.float32), np.asarray(want, np.float32))
    assert precision.stored(x, jnp.float32) is x and precision.loaded(x, jnp.float32) is x


@pytest.mark.parametrize(
    ("flags", "bf16", "fp16"),
    [
        ({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16"}, "native", "native"),  # Xeon with AMX
        ({"avx2", "avx512f", "avx512_bf16"}, "native", "float32"),  # AMD EPYC (Zen 4)
        ({"avx2", "avx512f"}, "float32", "float32"),  # AVX-512 without BF16
        ({"avx2", "fma"}, "float32", "float32"),  # AVX2 only
        ({"asimd", "bf16"}, "native", "float32"),  # aarch64 with BF16
    ],
)
def test_auto_picks_native_narrow_dots_only_where_the_cpu_has_them(monkeypatch, flags, bf16, fp16):
    monkeypatch.delenv(precision.NARROW_DOTS_ENV, raising=False)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset(flags))
    precision.narrow_dots.cache_clear()
    try:
        assert precision.narrow_dots(jnp.bfloat16) == bf16 and precision.narrow_dots(jnp.float16) == fp16
        assert precision.dot_operand_dtype(jnp.bfloat16) == (jnp.bfloat16 if bf16 == "native" else np.float32)
        assert precision.narrow_dots(jnp.float32) == "native" and precision.dot_operand_dtype(jnp.float32) == np.float32
    finally:
        precision.narrow_dots.cache_clear()


def test_a_bad_narrow_dots_setting_is_refused(monkeypatch):
    monkeypatch.setenv(precision.NARROW_DOTS_ENV, "fast")
    precision.narrow_dots.cache_clear()
    try:
        with pytest.raises(ValueError, match="JAXLSTM_NARROW_DOTS must be 'auto', 'native' or 'float32'; got 'fast'"):
            precision.narrow_dots(jnp.bfloat16)
    finally:
        precision.narrow_dots.cache_clear()
