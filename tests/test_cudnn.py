"""cuDNN through ``jax.experimental.rnn``, tested on CPU (docs/gpu.md).

* Packing: ``StackParams`` ↔ cuDNN's flat weight vector, bit-exact round trips, and the layout
  checked against ``jax.experimental.rnn``'s own ``unpack_lstm_weights`` and ``lstm_ref``.
* The dispatch, end to end: ``tests/cudnn_cpu.py`` gives the binding's primitives CPU lowerings
  built from ``lstm_ref`` and makes the dispatch see a CUDA GPU, so ``backend="cudnn"`` runs here
  through the same packing, primitives and fix-ups as on a GPU; values and gradients are checked
  against jaxlstm's fused XLA path.
"""

from __future__ import annotations

import functools

import cudnn_cpu
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import rnn

import jaxlstm as jl
from jaxlstm import cudnn

# ----------------------------------------------------------------------------- packing

LAYOUTS = [(1, False), (2, True), (3, False)]  # (num_layers, bidirectional)


def _bits(tree):
    return [np.asarray(leaf).view(np.uint32) for leaf in jax.tree.leaves(tree)]


def _random_stack(rng, input_size, hidden_size, num_layers, bidirectional):
    directions = 2 if bidirectional else 1
    widths = [input_size] + [directions * hidden_size] * (num_layers - 1)
    return tuple(
        tuple(
            jl.LSTMParams(*(rng.standard_normal(shape).astype(np.float32) for shape in shapes))
            for _ in range(directions)
        )
        for shapes in [
            ((width, 4 * hidden_size), (hidden_size, 4 * hidden_size), (4 * hidden_size,)) for width in widths
        ]
    )


@pytest.mark.parametrize("num_layers, bidirectional", LAYOUTS)
def test_round_trip_from_jaxlstm_is_bit_exact(rng, num_layers, bidirectional):
    stack = _random_stack(rng, 3, 2, num_layers, bidirectional)
    stack[0][0].b[:3] = [-0.0, np.nan, np.inf]  # b_hh = −0.0 gives each of these back from b_ih + b_hh

    weights, back = jax.jit(lambda s: (w := cudnn.to_cudnn(s), cudnn.from_cudnn(w, 3, 2, num_layers, bidirectional)))(
        stack
    )

    assert weights.shape == (rnn.get_num_params_in_lstm(3, 2, num_layers, bidirectional),)
    assert weights.shape == (cudnn.num_weights(3, 2, num_layers, bidirectional),)
    assert jax.tree.structure(back) == jax.tree.structure(stack)
    for got, want in zip(_bits(back), _bits(stack), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("num_layers, bidirectional", LAYOUTS)
def test_layout_is_jax_experimental_rnns(num_layers, bidirectional):
    """cuDNN → jaxlstm against jax's own unpacking: w_ih = W_ihᵀ, w_hh = W_hhᵀ, b = b_ih + b_hh; and
    back to cuDNN, W_ih and W_hh are exact and b_ih + b_hh is kept."""
    weights = np.random.default_rng(num_layers).uniform(-1, 1, cudnn.num_weights(3, 2, num_layers, bidirectional))
    weights = weights.astype(np.float32)  # NumPy throughout: jax's unpacking slices it without compiling anything
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, 3, 2, num_layers, bidirectional)

    stack = cudnn.from_cudnn(weights, 3, 2, num_layers, bidirectional)
    repacked = rnn.unpack_lstm_weights(np.asarray(cudnn.to_cudnn(stack)), 3, 2, num_layers, bidirectional)

    cells = [params for directions in stack for params in directions]
    assert len(cells) == num_layers * (2 if bidirectional else 1)
    for cell, params in enumerate(cells):
        np.testing.assert_array_equal(params.w_ih, w_ih[cell].T)
        np.testing.assert_array_equal(params.w_hh, w_hh[cell].T)
        np.testing.assert_array_equal(params.b, b_ih[cell] + b_hh[cell])
        np.testing.assert_array_equal(repacked[0][cell], w_ih[cell])
        np.testing.assert_array_equal(repacked[1][cell], w_hh[cell])
        np.testing.assert_array_equal(repacked[2][cell] + repacked[3][cell], b_ih[cell] + b_hh[cell])


def test_carries_round_trip_and_layout():
    carries = tuple(
        tuple(jl.LSTMCarry(jnp.full((2, 3), 10.0 * layer + d), jnp.full((2, 3), -10.0 * layer - d)) for d in range(2))
        for layer in range(2)
    )
    h0, c0 = cudnn.carries_to_cudnn(carries)
    assert h0.shape == c0.shape == (4, 2, 3)  # (layers·directions, batch, H): forward 0, backward 0, forward 1, ...
    np.testing.assert_array_equal(h0[:, 0, 0], [0.0, 1.0, 10.0, 11.0])
    back = cudnn.carries_from_cudnn(h0, c0, bidirectional=True)
    for got, want in zip(_bits(back), _bits(carries), strict=True):
        np.testing.assert_array_equal(got, want)


def test_from_cudnn_refuses_a_vector_of_the_wrong_size():
    with pytest.raises(ValueError, match=r"shape \(144,\) for input_size=3, hidden_size=4.*got \(143,\)"):
        cudnn.from_cudnn(jnp.zeros(143), 3, 4)


def test_lstm_ref_on_packed_weights_equals_stacked_lstm(rng):
    """JAX's reference of the cuDNN LSTM on ``to_cudnn``'s vector computes what ``jl.stacked_lstm`` does:
    2 bidirectional layers, ragged lengths (lstm_ref needs >= 1), random initial carries."""
    num_layers, directions, bidirectional = 2, 2, True
    stack = _random_stack(rng, 3, 4, num_layers, bidirectional)
    xs = jnp.asarray(rng.standard_normal((3, 6, 3)), jnp.float32)
    h0, c0 = (jnp.asarray(rng.standard_normal((num_layers * directions, 3, 4)), jnp.float32) for _ in range(2))
    lengths = jnp.array([6, 2, 4], jnp.int32)

    static = dict(input_size=3, hidden_size=4, num_layers=num_layers, dropout=0.0, bidirectional=bidirectional)
    y, h_n, c_n = jax.jit(lambda *a: cudnn_cpu._reference(*a, **static))(xs, h0, c0, cudnn.to_cudnn(stack), lengths)
    finals, hs = jax.jit(jl.stacked_lstm)(
        stack, xs, cudnn.carries_from_cudnn(h0, c0, bidirectional), seq_lengths=lengths
    )

    np.testing.assert_allclose(hs, y, rtol=0, atol=1e-6)
    h_ours, c_ours = cudnn.carries_to_cudnn(finals)
    np.testing.assert_allclose(h_ours, h_n, rtol=0, atol=1e-6)
    np.testing.assert_allclose(c_ours, c_n, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- the dispatch, end to end on CPU


@pytest.fixture
def gpu(monkeypatch):
    """jaxlstm's dispatch sees a CUDA GPU with cuDNN; the binding runs lstm_ref (tests/cudnn_cpu.py)."""
    cudnn_cpu.simulated_gpu(monkeypatch)


def _normal(rng, *shape):
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)


def _carries(rng, cells, *batch, hidden=4):
    return tuple(
        tuple(jl.LSTMCarry(_normal(rng, *batch, hidden), _normal(rng, *batch, hidden)) for _ in row) for row in cells
    )


def _cases(rng):
    """The calls checked end to end: ``{name: (function of (weights, xs, carries, **options), arguments)}``.
    T = 4 steps, one chunk of the fused loop, keeps compiling cheap."""
    lengths = jnp.array([4, 0, 2])
    one = jl.init_params(jax.random.key(0), 3, 4)
    bi_concat = jl.init_stack(jax.random.key(1), 3, 4, num_layers=2, bidirectional=True)
    bi_sum = jl.init_stack(jax.random.key(2), 3, 4, num_layers=2, bidirectional=True, merge="sum")
    return {
        # one layer read backward (rows flipped within their lengths), a row of length 0, a given carry
        "lstm reverse": (
            lambda p, xs, c, **kw: jl.lstm(p, xs, c[0][0], seq_lengths=lengths, reverse=True, **kw),
            (one, _normal(rng, 3, 4, 3), _carries(rng, [[one]], 3)),
        ),
        # two bidirectional layers concatenated: one cuDNN call for the stack
        "bidirectional concat": (
            lambda p, xs, c, **kw: jl.stacked_lstm(p, xs, c, seq_lengths=lengths, **kw),
            (bi_concat, _normal(rng, 3, 4, 3), _carries(rng, bi_concat, 3)),
        ),
        # two bidirectional layers merged by "sum": one cuDNN call per layer, merged between them
        "bidirectional sum": (
            lambda p, xs, c, **kw: jl.stacked_lstm(p, xs, c, seq_lengths=lengths, merge="sum", **kw),
            (bi_sum, _normal(rng, 3, 4, 3), _carries(rng, bi_sum, 3)),
        ),
    }


def _loss(outputs):
    return sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(outputs))


def _values_and_grads(cases, **options):
    """Every case's outputs and gradients (weights, inputs, carries), compiled as one function; and its jaxpr."""

    def run(arguments):
        results = {}
        for name, (fn, _) in cases.items():
            call = functools.partial(fn, **options)
            grad = jax.grad(lambda a, call=call: (lambda out: (_loss(out), out))(call(*a)), has_aux=True)
            gradients, outputs = grad(arguments[name])
            results[name] = (outputs, gradients)
        return results

    traced = jax.jit(run).trace({name: args for name, (_, args) in cases.items()})
    return traced.lower().compile()({name: args for name, (_, args) in cases.items()}), traced.jaxpr


def test_cudnn_path_matches_the_fused_xla_path(gpu, rng):
    cases = _cases(rng)
    before = dict(cudnn_cpu.CALLS)

    ours, jaxpr = _values_and_grads(cases, backend="cudnn")
    reference, _ = _values_and_grads(cases, backend="xla")

    # cuDNN ran: its primitives are in the program (one per call, two for the per-layer "sum" stack),
    # and the binding's forward and backward were lowered
    primitives = str(jaxpr)
    assert primitives.count("jaxlstm_cudnn_lstm[") == 4 and primitives.count("jaxlstm_cudnn_lstm_backward[") == 4
    assert cudnn_cpu.CALLS["rnn_fwd"] > before["rnn_fwd"] and cudnn_cpu.CALLS["rnn_bwd"] > before["rnn_bwd"]
    for name in cases:
        for got, want in zip(jax.tree.leaves(ours[name]), jax.tree.leaves(reference[name]), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)

    # a row of length 0 outputs zeros and keeps its initial carry, exactly
    for name in cases:
        (finals, hs), _ = ours[name]
        start = cases[name][1][2]
        np.testing.assert_array_equal(hs[1], 0.0, err_msg=name)
        for got, want in zip(jax.tree.leaves(finals), jax.tree.leaves(start), strict=True):
            np.testing.assert_array_equal(got[1], want[1], err_msg=name)


def test_under_vmap_jvp_and_second_derivatives_the_call_falls_back_to_xla(gpu, rng):
    """cuDNN has no batching rule, no forward mode and a backward pass that is not differentiable: these
    transformations of a ``backend="cudnn"`` call run jaxlstm's XLA loop instead, and agree with it."""
    params = jl.init_params(jax.random.key(0), 3, 4)
    xs = _normal(rng, 2, 4, 3)  # vmapped over 2 single sequences: the call inside sees no batch dims
    tangent_xs = _normal(rng, 2, 4, 3)

    def transformed(backend, gradient):
        def outputs(xs):
            return jl.lstm(params, xs, backend=backend, gradient=gradient)[1]

        def loss(xs):
            return jnp.sum(jnp.sin(outputs(xs)))

        primal, tangent = jax.jvp(jax.vmap(outputs), (xs,), (tangent_xs,))
        second = jax.grad(lambda xs: jnp.sum(jax.grad(loss)(xs) ** 2))(xs[0])
        return {"vmap": primal, "jvp of vmap": tangent, "grad of grad": second}

    ours = jax.jit(transformed, static_argnums=(0, 1))("cudnn", "fused")
    reference = jax.jit(transformed, static_argnums=(0, 1))("xla", "autodiff")  # the XLA loop with forward mode

    for name in ours:
        np.testing.assert_allclose(ours[name], reference[name], rtol=1e-5, atol=1e-6, err_msg=name)
    batched = str(jax.make_jaxpr(jax.vmap(lambda xs: jl.lstm(params, xs, backend="cudnn")[1]))(xs))
    assert "jaxlstm_cudnn" not in batched  # vmap replaced the cuDNN call by the XLA loop


def test_without_the_binding_the_primitives_lower_to_the_xla_loop(monkeypatch, rng):
    """A platform the binding doesn't lower for (here CPU, as a CPU device on a GPU machine) gets
    jaxlstm's XLA loop from the same primitives."""
    cudnn_cpu.simulated_gpu(monkeypatch, binding_lowers_on_cpu=False)
    params = jl.init_params(jax.random.key(0), 2, 3)
    xs, lengths = _normal(rng, 2, 4, 2), jnp.array([4, 1])
    before = dict(cudnn_cpu.CALLS)

    ours = jax.jit(lambda p, xs: jl.lstm(p, xs, seq_lengths=lengths, backend="cudnn"))(params, xs)
    reference = jax.jit(lambda p, xs: jl.lstm(p, xs, seq_lengths=lengths, backend="xla"))(params, xs)

    assert cudnn_cpu.CALLS == before
    for got, want in zip(jax.tree.leaves(ours), jax.tree.leaves(reference), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- which calls go where, and why

PARAMS = jl.init_params(jax.random.key(0), 3, 4)
XS = jnp.zeros((2, 5, 3))
STACK = jl.init_stack(jax.random.key(0), 3, 4, num_layers=2)

DECISIONS = [  # (arguments of backend_for, expected backend, a piece of the reason, as written)
    ({}, "cudnn", None),
    (dict(seq_lengths=jnp.array([5, 2]), reverse=True, unroll=4), "cudnn", None),
    (dict(masked_output="previous"), "cudnn", None),  # no padded steps: nothing to output there
    (dict(variant=jl.LSTMVariant()), "cudnn", None),  # every option off: the plain cell
    (dict(params=STACK, dropout=0.5), "cudnn", None),  # no dropout_key: no dropout
    (dict(params=STACK, dropout=0.5, dropout_key=jax.random.key(0), deterministic=True), "cudnn", None),
    (dict(backend="xla"), "xla", "backend='xla' was asked for"),
    (dict(mask=jnp.ones((2, 5), bool)), "xla", "mask= is given"),
    (dict(resets=jnp.zeros((2, 5), bool)), "xla", "resets= is given"),
    (dict(masked_output="previous", seq_lengths=jnp.array([5, 2])), "xla", "masked_output='previous' with seq_"),
    (dict(gradient="autodiff"), "xla", "gradient='autodiff' asks JAX to differentiate"),
    (dict(checkpoint_every=2), "xla", "checkpoint_every=2"),
    (dict(variant=jl.LSTMVariant(cell_clip=3.0)), "xla", "variant=LSTMVariant(cell_clip=3.0) is not the plain"),
    (dict(gate_fn=jax.nn.hard_sigmoid), "xla", "gate_fn=hard_sigmoid is not jax.nn.sigmoid"),
    (dict(activation_fn=jax.nn.relu), "xla", "activation_fn=relu is not jnp.tanh"),
    (dict(xs=XS.astype(jnp.bfloat16)), "xla", "xs is bfloat16, not float32"),
    (dict(params=jax.tree.map(lambda a: a.astype(jnp.float16), PARAMS)), "xla", "params.w_ih is float16"),
    (dict(carry=jl.LSTMCarry(jnp.zeros((2, 4)), jnp.zeros((2, 4), jnp.bfloat16))), "xla", "carry's c is bfloat16"),
    (dict(params=STACK, dropout=0.5, dropout_key=jax.random.key(0)), "xla", "dropout=0.5 between layers"),
    (dict(xs=jnp.zeros((0, 5, 3))), "xla", "an empty batch or sequence (xs.shape=(0, 5, 3))"),
]


@pytest.mark.parametrize("arguments, backend, reason", DECISIONS)
def test_decisions_on_a_gpu(gpu, arguments, backend, reason):
    arguments = {"params": PARAMS, "xs": XS, **arguments}
    choice = jl.backend_for(arguments.pop("params"), arguments.pop("xs"), arguments.pop("carry", None), **arguments)
    assert choice.backend == backend
    if reason is None:
        assert choice.reason is None
    else:
        assert reason in (choice.reason or ""), choice.reason


def test_the_call_goes_where_backend_for_says(gpu):
    """The calls take the route backend_for gives (traced only, nothing compiled)."""
    for arguments, expected in [({}, True), (dict(mask=jnp.ones((2, 5), bool)), False), (dict(backend="xla"), False)]:
        program = str(jax.make_jaxpr(lambda xs, a=arguments: jl.lstm(PARAMS, xs, **a))(XS))
        assert (
            ("jaxlstm_cudnn_lstm" in program)
            == expected
            == (jl.backend_for(PARAMS, XS, **arguments).backend == "cudnn")
        )
    program = str(jax.make_jaxpr(lambda xs: jl.stacked_lstm(STACK, xs))(XS))
    assert program.count("jaxlstm_cudnn_lstm[") == 1  # the whole stack in one call


def test_decisions_off_a_gpu(monkeypatch):
    assert jl.backend_for(PARAMS, XS) == ("xla", f"the default backend is {jax.default_backend()}, not a CUDA GPU")
    monkeypatch.setattr(cudnn, "_platform", lambda: "cuda")  # a CUDA GPU, but jaxlib without the CUDA plugin
    assert jl.backend_for(PARAMS, XS).reason == (
        "jaxlib has no cuDNN RNN binding (jax.experimental.rnn needs the jax CUDA plugin)"
    )
    monkeypatch.setattr(cudnn, "_platform", lambda: "rocm")
    assert "ROCm" in jl.backend_for(PARAMS, XS).reason


@pytest.mark.parametrize(
    "arguments, match",
    [
        (dict(mask=jnp.ones((2, 5), bool)), "mask= is given"),
        (dict(checkpoint_every=2), "checkpoint_every=2"),
        (dict(gradient="autodiff"), "gradient='autodiff'"),
    ],
)
def test_explicit_cudnn_on_an_ineligible_call_raises(gpu, arguments, match):
    with pytest.raises(ValueError, match=r"jaxlstm.lstm\(\.\.\., backend='cudnn'\) can't run on cuDNN: " + match):
        jl.lstm(PARAMS, XS, backend="cudnn", **arguments)
    with pytest.raises(ValueError, match=r"jaxlstm.stacked_lstm\(\.\.\., backend='cudnn'\) can't run on cuDNN"):
        jl.stacked_lstm(STACK, XS, backend="cudnn", **arguments)


def test_explicit_cudnn_off_a_gpu_raises():
    with pytest.raises(ValueError, match="can't run on cuDNN: the default backend is cpu, not a CUDA GPU"):
        jl.lstm(PARAMS, XS, backend="cudnn")


def test_backend_and_precision_are_validated():
    with pytest.raises(ValueError, match=r"backend must be one of 'auto', 'xla', 'cudnn', got 'gpu'"):
        jl.lstm(PARAMS, XS, backend="gpu")
    with pytest.raises(ValueError, match=r"cudnn_precision must be one of 'float32', 'tf32', got 'bf16'"):
        jl.stacked_lstm(STACK, XS, cudnn_precision="bf16")


def test_precision_reaches_the_binding(gpu):
    """float32 by default (cuDNN's FMA math, no TF32); ``cudnn_precision="tf32"`` allows TF32."""
    for precision, allow_tf32 in [("float32", False), ("tf32", True)]:
        lowered = jax.jit(lambda xs, p=precision: jl.lstm(PARAMS, xs, cudnn_precision=p)[1]).lower(XS)
        assert cudnn_cpu.LAST_ALLOW_TF32 is allow_tf32
        assert f"allow_tf32={allow_tf32}" in str(
            jax.make_jaxpr(lambda xs, p=precision: jl.lstm(PARAMS, xs, cudnn_precision=p))(XS)
        )
        del lowered


def test_the_flax_modules_take_backend(gpu):
    """``backend`` and ``cudnn_precision`` are options of ``jl.LSTM`` and ``jl.nnx.LSTM`` (``LayerConfig``),
    validated where the module is built and handed to ``jl.stacked_lstm`` (traced only)."""
    from flax import nnx

    def cudnn_calls(fn, *args):
        return str(jax.make_jaxpr(fn)(*args)).count("jaxlstm_cudnn_lstm[")

    linen = jl.LSTM(4, num_layers=2, bidirectional=True, cudnn_precision="tf32")
    shapes = jax.eval_shape(linen.init, jax.random.key(0), XS)
    variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    assert cudnn_calls(linen.apply, variables, XS) == 1
    assert cudnn_calls(linen.clone(backend="xla").apply, variables, XS) == 0
    with pytest.raises(ValueError, match="can't run on cuDNN: gradient='autodiff'"):
        linen.clone(backend="cudnn", gradient="autodiff").apply(variables, XS)
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'xla', 'cudnn', got 'gpu'"):
        jl.LSTM(4, backend="gpu")

    model = jl.nnx.LSTM(3, 4, backend="cudnn", rngs=nnx.Rngs(0))
    assert model.config.backend == "cudnn" and cudnn_calls(lambda x: model(x), XS) == 1
    with pytest.raises(ValueError, match="cudnn_precision must be one of 'float32', 'tf32', got 'TF32'"):
        jl.nnx.LSTM(3, 4, cudnn_precision="TF32", rngs=nnx.Rngs(0))


def test_backend_for_refuses_an_unknown_keyword():
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['seq_length'\]"):
        jl.backend_for(PARAMS, XS, seq_length=jnp.array([5, 2]))
