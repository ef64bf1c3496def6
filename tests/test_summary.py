"""jaxlstm.summary on Flax models mixing jaxlstm layers with Flax's own (linen and NNX)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import jaxlstm as jl
from jaxlstm.cell import LSTMCarry
from jaxlstm.explain import explain
from jaxlstm.summary import Summary, summary

B, T, D, H, N = 3, 5, 6, 4, 7


def _count(tree) -> int:
    return sum(math.prod(a.shape) for a in jax.tree.leaves(tree))


# --------------------------------------------------------------------------- linen


class LinenTagger(nn.Module):
    """A bidirectional 2-layer jl.LSTM between two Dense layers."""

    @nn.compact
    def __call__(self, x, seq_lengths=None, deterministic=True):
        x = nn.Dense(D)(x)
        x = jl.LSTM(H, num_layers=2, bidirectional=True, dropout=0.25)(
            x, seq_lengths=seq_lengths, deterministic=deterministic
        )
        x = nn.Dropout(0.25, deterministic=deterministic)(x)
        return nn.Dense(N)(x)


def test_linen_mixed_model():
    x = jnp.ones((B, T, D))
    s = summary(LinenTagger(), x)
    assert isinstance(s, Summary) and s.api == "linen" and s.model_type == "LinenTagger"
    assert [(row.name, row.type) for row in s.layers] == [
        ("Dense_0", "Dense"),
        ("LSTM_0", "jl.LSTM"),
        ("Dropout_0", "Dropout"),
        ("Dense_1", "Dense"),
    ]
    dense0, lstm, dropout, dense1 = s.layers
    assert (dense0.input_shape, dense0.output_shape, dense0.num_params) == ((B, T, D), (B, T, D), D * D + D)
    assert (lstm.input_shape, lstm.output_shape) == ((B, T, D), (B, T, 2 * H))
    assert lstm.carry_shape == (B, H)
    assert lstm.carry_shapes == ((LSTMCarry((B, H), (B, H)),) * 2,) * 2
    assert lstm.num_params == explain(B, T, D, H, num_layers=2, bidirectional=True).total_params == 768
    assert lstm.is_jaxlstm and not dense1.is_jaxlstm
    assert (dropout.num_params, dropout.carry_shape) == (0, None)
    assert (dense1.input_shape, dense1.output_shape, dense1.num_params) == ((B, T, 2 * H), (B, T, N), 2 * H * N + N)
    assert s.input_shape == (B, T, D) and s.output_shape == (B, T, N)

    real = jax.eval_shape(LinenTagger().init, jax.random.key(0), x)
    assert s.total_params == _count(real["params"]) == sum(row.num_params for row in s.layers)
    assert s["LSTM_0"] is lstm
    with pytest.raises(KeyError, match="LSTM_1"):
        s["LSTM_1"]


def test_linen_table_text():
    text = str(summary(LinenTagger(), jnp.ones((B, T, D))))
    lines = text.splitlines()
    assert lines[0] == 'Model: "LinenTagger" (flax.linen)'
    assert lines[2].split() == "Layer (type) Input shape Output shape Carry per cell Params".split()
    lstm_line = next(line for line in lines if line.startswith("LSTM_0 (jl.LSTM)"))
    assert lstm_line.split()[-1] == "768"
    assert f"({B}, {T}, {D})" in lstm_line and f"({B}, {T}, {2 * H})" in lstm_line
    assert f"h, c ({B}, {H}) x 2x2" in lstm_line
    assert f"Total params: {768 + 42 + 63:,}" in text
    assert "docs/shapes.md#carry" in text


def test_linen_keyword_arrays_and_flags():
    """Arrays among the call's kwargs are abstract too; other values (deterministic=False) pass as they are."""
    x = jax.ShapeDtypeStruct((B, T, D), jnp.float32)
    s = summary(LinenTagger(), x, seq_lengths=jnp.array([T, 2, 0]), deterministic=False)
    assert s.output_shape == (B, T, N)


def test_linen_last_step_classifier_and_huge_shapes():
    """eval_shape all the way: a (10^5, 10^3, 64) input would need 25 GB if anything ran."""

    class Classifier(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(jl.LSTM(128, return_sequences=False)(x))

    s = summary(Classifier(), jax.ShapeDtypeStruct((100_000, 1_000, 64), jnp.float32))
    assert [row.output_shape for row in s.layers] == [(100_000, 128), (100_000, 2)]
    assert s.layers[0].num_params == explain(1, 1, 64, 128).total_params
    assert s.total_params == explain(1, 1, 64, 128).total_params + 128 * 2 + 2


def test_linen_rnn_cell():
    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(1)(nn.RNN(jl.LSTMCell(H))(x))

    s = summary(Model(), jnp.ones((B, T, D)))
    cell = next(row for row in s.layers if row.type == "jl.LSTMCell")
    assert cell.carry_shape == (B, H)
    assert cell.input_shape == (LSTMCarry((B, H), (B, H)), (B, D))
    assert cell.num_params == explain(B, T, D, H).total_params
    assert s.total_params == cell.num_params + H + 1


def test_bare_jaxlstm_layer():
    s = summary(jl.LSTM(H, num_layers=3), jnp.ones((B, T, D)))
    assert s.layers == ()
    assert s.rows[0].type == "jl.LSTM" and s.rows[0].carry_shapes == ((LSTMCarry((B, H), (B, H)),),) * 3
    assert s.total_params == explain(B, T, D, H, num_layers=3).total_params
    assert "(model) (jl.LSTM)" in str(s)


def test_rejects_what_is_not_a_flax_model():
    with pytest.raises(TypeError, match="flax.linen.Module or a flax.nnx.Module, got function"):
        summary(lambda x: x, jnp.ones((B, T, D)))
    variables = jax.eval_shape(jl.LSTM(H).init, jax.random.key(0), jnp.ones((B, T, D)))
    bound = jl.LSTM(H).bind(variables)
    with pytest.raises(TypeError, match="unbound linen module"):
        summary(bound, jnp.ones((B, T, D)))


# --------------------------------------------------------------------------- nnx


class NNXClassifier(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Linear(D, D, rngs=rngs)
        self.lstm = jl.nnx.LSTM(D, H, num_layers=2, bidirectional=True, return_sequences=False, dropout=0.25, rngs=rngs)
        self.head = nnx.Sequential(nnx.Linear(2 * H, 8, rngs=rngs), nnx.relu, nnx.Linear(8, N, rngs=rngs))

    def __call__(self, x):
        return self.head(self.lstm(self.embed(x)))


@pytest.fixture(scope="module")
def nnx_model():
    """A real (initialised) model; built once, as eager initialisation is the slow part."""
    return NNXClassifier(nnx.Rngs(0))


def test_nnx_mixed_model(nnx_model):
    model = nnx_model
    params_before = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    counts_before = nnx.to_pure_dict(nnx.state(model, nnx.RngCount))
    calls_before = {cls: cls.__dict__["__call__"] for cls in (jl.nnx.LSTM, nnx.Linear, nnx.Sequential)}

    s = summary(model, jnp.ones((B, T, D)))

    assert s.api == "nnx" and s.model_type == "NNXClassifier"
    assert [(row.name, row.type, row.depth) for row in s.layers] == [
        ("embed", "Linear", 1),
        ("lstm", "jl.nnx.LSTM", 1),
        ("head", "Sequential", 1),
        ("head.layers.0", "Linear", 3),
        ("head.layers.2", "Linear", 3),
    ]
    embed, lstm, head, first, last = s.layers
    assert (embed.output_shape, embed.num_params) == ((B, T, D), D * D + D)
    assert (lstm.input_shape, lstm.output_shape) == ((B, T, D), (B, 2 * H))
    assert lstm.carry_shape == (B, H)
    assert lstm.carry_shapes == ((LSTMCarry((B, H), (B, H)),) * 2,) * 2
    assert lstm.num_params == explain(B, T, D, H, num_layers=2, bidirectional=True).total_params
    assert (first.input_shape, first.output_shape, first.num_params) == ((B, 2 * H), (B, 8), 2 * H * 8 + 8)
    assert (last.output_shape, last.num_params) == ((B, N), 8 * N + N)
    assert head.num_params == first.num_params + last.num_params
    assert s.total_params == _count(nnx.state(model, nnx.Param)) == embed.num_params + lstm.num_params + head.num_params
    assert "lstm (jl.nnx.LSTM)" in str(s)

    # the model is untouched (dropout's rng counter included) and the classes are restored
    params_after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params_before, params_after))
    counts_after = nnx.to_pure_dict(nnx.state(model, nnx.RngCount))
    assert jax.tree.leaves(counts_before)  # the dropout stream has a counter, and it did not move
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), counts_before, counts_after))
    assert {cls: cls.__dict__["__call__"] for cls in calls_before} == calls_before


def test_nnx_shared_layer_and_call_kwargs():
    class Shared(nnx.Module):
        def __init__(self, rngs):
            self.lstm = jl.nnx.LSTM(D, H, rngs=rngs)
            self.proj = nnx.Linear(H, H, rngs=rngs)

        def __call__(self, x, seq_lengths=None):
            h = self.lstm(x, seq_lengths=seq_lengths)
            return self.proj(self.proj(h))  # the same layer twice

    model = nnx.eval_shape(lambda: Shared(nnx.Rngs(1)))  # abstract parameters are enough
    s = summary(model, jax.ShapeDtypeStruct((B, T, D), jnp.float32), seq_lengths=jnp.array([1, 2, 3]))
    proj = s["proj"]
    assert proj.calls == 2 and proj.output_shape == (B, T, H)
    assert s.total_params == explain(B, T, D, H).total_params + H * H + H


def test_nnx_dropout_in_training_mode():
    model = nnx.eval_shape(lambda: NNXClassifier(nnx.Rngs(0)))
    model.train()
    assert model.lstm.deterministic is False
    assert summary(model, jnp.ones((B, T, D))).output_shape == (B, N)


def test_nnx_abstract_model_matches_real_one(nnx_model):
    abstract = nnx.eval_shape(lambda: NNXClassifier(nnx.Rngs(0)))
    real, fake = summary(nnx_model, jnp.ones((B, T, D))), summary(abstract, jnp.ones((B, T, D)))
    assert real.rows == fake.rows and real.total_params == fake.total_params
    assert str(real) == str(fake)


def test_gru_layers_count_three_gates_and_carry_h_alone():
    """A GRU cell holds 3 gates and two biases: 3·(H·(D + H) + 2H) parameters; its carry is h alone."""
    d, h = 8, 32

    class Tagger(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(5)(jl.GRU(h, bidirectional=True)(x))

    s = jl.summary(Tagger(), jnp.ones((4, 10, d)))
    assert s["GRU_0"].num_params == 2 * 3 * (h * (d + h) + 2 * h)
    assert s["GRU_0"].carry_shapes == (((4, h), (4, h)),)
    assert "h (4, 32) x 1x2" in str(s) and "Carry per cell: h, (batch, H)" in str(s)
    stacked = jl.summary(jl.nnx.GRU(d, h, num_layers=2, rngs=nnx.Rngs(0)), jnp.ones((4, 10, d)))
    assert stacked.total_params == 3 * (h * (d + h) + 2 * h) + 3 * (h * (h + h) + 2 * h)
