"""The README's snippets as a user's script, for the type checker (pyright, in .ci/run).

pyright must report no error here: the public names (among them the lazily loaded ``jl.LSTM`` and
``jl.nnx``) resolve for a type checker as they do at run time. pytest does not collect this folder
(``collect_ignore`` in tests/conftest.py); ``python tests/typing/readme_usage.py`` runs it.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

import jaxlstm as jl


class Classifier(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # (batch, T, D)
        h = jl.LSTM(features=32, return_sequences=False)(x)  # (batch, H)
        return nn.Dense(features=3)(h)  # (batch, classes)


def shape_of(out: object) -> tuple[int, ...]:
    """The shape of ``Module.apply``'s result.

    Flax types ``apply`` as returning ``Any | tuple[Any, variables]`` (the pair when ``mutable=`` is
    given), for every linen module, so a type checker needs this narrowing before ``.shape``.
    """
    assert isinstance(out, jax.Array)
    return out.shape


def main() -> None:
    # Quick start: units and time steps.
    x = jnp.ones((4, 10, 8))  # (batch=4, time T=10, input D=8)
    layer = jl.LSTM(features=32)  # H = 32 units
    variables = layer.init(jax.random.key(0), x)
    assert shape_of(layer.apply(variables, x)) == (4, 10, 32)
    assert shape_of(jl.LSTM(features=32, return_sequences=False).apply(variables, x)) == (4, 32)

    model = Classifier()
    variables = model.init(jax.random.key(0), x)
    assert shape_of(model.apply(variables, x)) == (4, 3)
    shapes = jax.tree.map(jnp.shape, variables["params"]["LSTM_0"])
    assert shapes == {"layer_0": {"b": (128,), "w_hh": (32, 128), "w_ih": (8, 128)}}

    # Functional core.
    params = jl.init_params(jax.random.key(0), input_size=8, hidden_size=32)
    assert (params.w_ih.shape, params.w_hh.shape, params.b.shape) == ((8, 128), (32, 128), (128,))
    carry, h = jl.lstm_cell(params, jl.zeros_carry(32, (4,)), x[:, 0])  # one step
    assert (h.shape, carry.c.shape) == ((4, 32), (4, 32))
    final, hs = jl.lstm(params, x, seq_lengths=jnp.array([10, 7, 3, 0]))  # all T steps
    assert (hs.shape, final.h.shape) == ((4, 10, 32), (4, 32))
    stack = jl.init_stack(jax.random.key(0), 8, 32, num_layers=2, bidirectional=True)
    assert (len(stack), len(stack[0]), stack[1][0].w_ih.shape) == (2, 2, (64, 128))
    finals, hs = jl.stacked_lstm(stack, x)
    assert (hs.shape, jl.last_output(finals).shape) == ((4, 10, 64), (4, 64))
    assert jl.merge_directions(final.h, final.h, "sum").shape == (4, 32)

    # The LSTM family through one variant= value.
    projected = jl.LSTM(32, variant=jl.LSTMVariant(proj_size=16, peepholes=True))
    assert shape_of(projected.apply(projected.init(jax.random.key(0), x), x)) == (4, 10, 16)

    # NNX.
    nnx_model = jl.nnx.LSTM(8, 32, num_layers=2, rngs=nnx.Rngs(0))  # in_features D=8, features H=32
    assert nnx_model(x).shape == (4, 10, 32)
    assert nnx_model.layer_1.w_ih[...].shape == (32, 128)  # layer 1 reads H = 32

    # Shapes walk-through and summary.
    print(jl.explain(4, 10, 8, 32))
    print(jl.summary(model, x))


if __name__ == "__main__":
    main()
