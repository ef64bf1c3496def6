"""An independent NumPy (float64) reference for the LSTM, written from the equations.

Nothing here imports jaxlstm: the tests compare the library against these plain
loops. Conventions (the library's contract, restated):

* inputs are batch-first ``(*batch, T, D)``; ``*batch`` may be empty or several dims;
* weights ``w_ih`` (D, 4H), ``w_hh`` (H, 4H), ``b`` (4H,), gates packed [i, f, g, o];
* ``z = x @ w_ih + h @ w_hh + b``; ``i, f, o = sigmoid``, ``g = tanh``;
  ``c' = f * c + i * g``; ``h' = o * tanh(c')``;
* with ``seq_lengths``, steps ``t >= length`` leave the carry unchanged and output
  zeros; ``reverse`` reads each sequence from ITS OWN last valid step
  (``length - 1``) back to step 0, outputs aligned with the inputs;
* stacks: layer ``l + 1`` reads layer ``l``'s output after the directions are
  merged as Keras' ``Bidirectional`` ("concat" forward first, "sum", "mul", "ave").

Every loop below is an explicit per-sequence, per-step Python loop; the reverse
direction literally iterates ``t = length - 1, ..., 0``.
"""

from __future__ import annotations

import math

import numpy as np

# ---------------------------------------------------------------------------
# The ONE tolerance table of the suite: library result dtype -> tolerance
# against the float64 reference (or against another computation of the same
# numbers). Tests never pass their own rtol/atol.
# ---------------------------------------------------------------------------
TOLERANCE = {
    "float64": dict(rtol=1e-10, atol=1e-12),
    "float32": dict(rtol=1e-5, atol=1e-5),
    "float16": dict(rtol=5e-3, atol=5e-3),
    "bfloat16": dict(rtol=2e-2, atol=2e-2),
}


def tolerance(dtype) -> dict:
    return TOLERANCE[np.dtype(dtype).name]


def assert_close(actual, expected, err_msg: str = "") -> None:
    """``actual`` (any array, its dtype picks the tolerance) close to ``expected``."""
    dtype = actual.dtype
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), np.asarray(expected, np.float64), err_msg=err_msg, **tolerance(dtype)
    )


def assert_tree_close(actual, expected, err_msg: str = "") -> None:
    """Elementwise ``assert_close`` over two nested tuples (NamedTuples included) of arrays."""
    if isinstance(expected, (tuple, list)):
        assert isinstance(actual, (tuple, list)), f"{err_msg}: expected a sequence, got {type(actual).__name__}"
        assert len(actual) == len(expected), f"{err_msg}: length {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_tree_close(a, e, f"{err_msg}[{i}]")
    else:
        assert tuple(actual.shape) == tuple(np.shape(expected)), (
            f"{err_msg}: shape {actual.shape} != {np.shape(expected)}"
        )
        assert_close(actual, expected, err_msg)


# ---------------------------------------------------------------------------
# Random test data (NumPy only)
# ---------------------------------------------------------------------------
def random_weights(rng: np.random.Generator, input_size: int, hidden_size: int, dtype=np.float32, scale: float = 0.6):
    """``(w_ih, w_hh, b)`` drawn N(0, scale²): large enough that no gate saturates."""
    gates = 4 * hidden_size
    return (
        (scale * rng.standard_normal((input_size, gates))).astype(dtype),
        (scale * rng.standard_normal((hidden_size, gates))).astype(dtype),
        (scale * rng.standard_normal((gates,))).astype(dtype),
    )


def random_stack_weights(rng, input_size, hidden_size, num_layers, bidirectional, merge, dtype=np.float32):
    """``[layer][direction] -> (w_ih, w_hh, b)``; later layers read the merged width."""
    width = 2 * hidden_size if (bidirectional and merge == "concat") else hidden_size
    num_directions = 2 if bidirectional else 1
    return tuple(
        tuple(
            random_weights(rng, input_size if layer == 0 else width, hidden_size, dtype) for _ in range(num_directions)
        )
        for layer in range(num_layers)
    )


# ---------------------------------------------------------------------------
# The reference itself
# ---------------------------------------------------------------------------
def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _f64(*arrays):
    return tuple(np.asarray(a, np.float64) for a in arrays)


def ref_cell(w_ih, w_hh, b, h, c, x):
    """One step for any leading batch dims: returns ``(h', c')``, float64."""
    w_ih, w_hh, b, h, c, x = _f64(w_ih, w_hh, b, h, c, x)
    hidden = w_hh.shape[0]
    z = x @ w_ih + h @ w_hh + b
    z_i = z[..., 0 * hidden : 1 * hidden]
    z_f = z[..., 1 * hidden : 2 * hidden]
    z_g = z[..., 2 * hidden : 3 * hidden]
    z_o = z[..., 3 * hidden : 4 * hidden]
    i, f, g, o = _sigmoid(z_i), _sigmoid(z_f), np.tanh(z_g), _sigmoid(z_o)
    c_new = f * c + i * g
    h_new = o * np.tanh(c_new)
    return h_new, c_new


def ref_lstm(w_ih, w_hh, b, xs, h0=None, c0=None, seq_lengths=None, reverse=False):
    """One layer, one direction over ``xs`` ``(*batch, T, D)``.

    Returns ``(h_final, c_final, hs)``: ``(*batch, H)``, ``(*batch, H)``,
    ``(*batch, T, H)``, all float64.
    """
    w_ih, w_hh, b, xs = _f64(w_ih, w_hh, b, xs)
    hidden = w_hh.shape[0]
    batch_shape, (time, features) = xs.shape[:-2], xs.shape[-2:]
    n = math.prod(batch_shape)
    flat_xs = xs.reshape(n, time, features)
    flat_h0 = np.zeros((n, hidden)) if h0 is None else np.asarray(h0, np.float64).reshape(n, hidden)
    flat_c0 = np.zeros((n, hidden)) if c0 is None else np.asarray(c0, np.float64).reshape(n, hidden)
    if seq_lengths is None:
        lengths = [time] * n
    else:
        lengths = [min(max(int(length), 0), time) for length in np.asarray(seq_lengths).reshape(n)]

    hs = np.zeros((n, time, hidden))
    h_final = np.zeros((n, hidden))
    c_final = np.zeros((n, hidden))
    for seq in range(n):
        h, c = flat_h0[seq], flat_c0[seq]
        length = lengths[seq]
        if reverse:
            steps = range(length - 1, -1, -1)  # this sequence's last valid step back to 0
        else:
            steps = range(0, length)
        for t in steps:
            h, c = ref_cell(w_ih, w_hh, b, h, c, flat_xs[seq, t])
            hs[seq, t] = h
        # steps t >= length were never visited: their outputs stay zero, the carry unchanged
        h_final[seq], c_final[seq] = h, c
    return (
        h_final.reshape(*batch_shape, hidden),
        c_final.reshape(*batch_shape, hidden),
        hs.reshape(*batch_shape, time, hidden),
    )


def ref_merge(forward, backward, merge):
    """Keras ``Bidirectional(merge_mode=...)``."""
    forward, backward = _f64(forward, backward)
    if merge == "concat":
        return np.concatenate([forward, backward], axis=-1)
    if merge == "sum":
        return forward + backward
    if merge == "mul":
        return forward * backward
    if merge == "ave":
        return (forward + backward) / 2.0
    raise ValueError(merge)


def ref_stack(
    stack_weights, xs, seq_lengths=None, merge="concat", carries=None, reverse=False, layer_input_scales=None
):
    """A stack of layers, each 1 (forward, or backward if ``reverse``) or 2 (forward, backward) directions.

    Args:
        stack_weights: ``[layer][direction] -> (w_ih, w_hh, b)`` (any 3-sequence).
        carries: optional ``[layer][direction] -> (h0, c0)``.
        layer_input_scales: optional ``{layer: multiplier}`` applied elementwise to
            the input of that layer (used to replay a dropout mask).

    Returns:
        ``(finals, hs)``: ``finals[layer][direction] = (h_final, c_final)`` and the
        last layer's merged outputs ``(*batch, T, F)``.
    """
    hs = np.asarray(xs, np.float64)
    finals = []
    for layer, directions in enumerate(stack_weights):
        if layer_input_scales is not None and layer in layer_input_scales:
            hs = hs * np.asarray(layer_input_scales[layer], np.float64)
        outputs, layer_finals = [], []
        for direction, (w_ih, w_hh, b) in enumerate(directions):
            h0, c0 = (None, None) if carries is None else carries[layer][direction]
            backward = direction == 1 or reverse
            h, c, out = ref_lstm(w_ih, w_hh, b, hs, h0, c0, seq_lengths=seq_lengths, reverse=backward)
            outputs.append(out)
            layer_finals.append((h, c))
        hs = outputs[0] if len(outputs) == 1 else ref_merge(outputs[0], outputs[1], merge)
        finals.append(tuple(layer_finals))
    return tuple(finals), hs


def ref_last_output(finals, merge="concat"):
    """The last layer's forward final h, merged with the backward final h (the one after step 0)."""
    last = finals[-1]
    if len(last) == 1:
        return last[0][0]
    return ref_merge(last[0][0], last[1][0], merge)
