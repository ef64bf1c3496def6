"""An independent NumPy (float64) reference for the LSTM variants, written from the papers' equations.

Nothing here imports jaxlstm. One step, for x (D,), h (R,), c (H,) — R = P with
a projection, else H — and each option skipped when it is off::

    h_in = h * keep_h / (1 - recurrent_dropout)          # Gal & Ghahramani 2016 (Keras' recurrent_dropout)
    x_in = x * keep_x / (1 - input_dropout)              # Keras' dropout
    a_x, a_h = x_in @ w_ih, h_in @ w_hh
    layer norm (Ba et al. 2016): a_x = LN(a_x) * ln_ih_scale; a_h = LN(a_h) * ln_hh_scale
    z = a_x + a_h + b = [z_i, z_f, z_g, z_o]
    peepholes (Gers & Schmidhuber 2000): z_i += p_i * c; z_f += p_f * c
    z_f += forget_bias
    i = sigmoid(z_i); g = tanh(z_g); f = 1 - i (CIFG) or sigmoid(z_f)
    c_new = clip(f * c + i * g, -cell_clip, cell_clip)
    peepholes: z_o += p_o * c_new
    o = sigmoid(z_o)
    m = o * tanh(LN(c_new) * ln_c_scale + ln_c_bias)     # layer norm; else o * tanh(c_new)
    h_new = m @ w_hr                                     # projection (Sak et al. 2014); else m
    zoneout (Krueger et al. 2016), training: h_new = where(zone_h, h, h_new), the same for c;
             deterministic: h_new = z_h * h + (1 - z_h) * h_new, the same for c

Per sequence the loop visits only the valid steps (t < length and mask[t]);
``resets`` split a row into segments, each read on its own (forward: first to
last step; reverse: last to first) from the initial carry.
"""

from __future__ import annotations

import numpy as np

OPTIONS = dict(
    proj_size=None,
    peepholes=False,
    layer_norm=False,
    cifg=False,
    forget_bias=0.0,
    cell_clip=None,
    input_dropout=0.0,
    recurrent_dropout=0.0,
    zoneout_h=0.0,
    zoneout_c=0.0,
    layer_norm_epsilon=1e-5,
)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _layer_norm(a, epsilon):
    mean = a.mean()
    variance = ((a - mean) ** 2).mean()
    return (a - mean) / np.sqrt(variance + epsilon)


def random_variant_weights(rng, input_size, hidden_size, options, dtype=np.float32, scale=0.6):
    """``{name: array}`` for one cell: every weight the options use, random (gains around 1)."""
    o = {**OPTIONS, **options}
    h = hidden_size
    r = h if o["proj_size"] is None else o["proj_size"]

    def normal(*shape, loc=0.0):
        return (loc + scale * rng.standard_normal(shape)).astype(dtype)

    weights = {"w_ih": normal(input_size, 4 * h), "w_hh": normal(r, 4 * h), "b": normal(4 * h)}
    if o["proj_size"] is not None:
        weights["w_hr"] = normal(h, r)
    if o["peepholes"]:
        weights["w_peep"] = normal(3, h)
    if o["layer_norm"]:
        weights |= {
            "ln_ih_scale": normal(4 * h, loc=1.0),
            "ln_hh_scale": normal(4 * h, loc=1.0),
            "ln_c_scale": normal(h, loc=1.0),
            "ln_c_bias": normal(h),
        }
    return weights


def ref_variant_cell(weights, h, c, x, options, keep_h=None, zone_h=None, zone_c=None, training=False, trace=None):
    """One step of one sequence: returns ``(h_new, c_new)`` in float64.

    ``keep_h`` (R,): the recurrent dropout mask; ``zone_h`` (R,), ``zone_c``
    (H,): the zoneout flags of this step (training). ``trace``, a list, collects
    the unclipped cell states (to check that clipping happened).
    """
    o = {**OPTIONS, **options}
    w = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    h, c, x = (np.asarray(a, np.float64) for a in (h, c, x))
    hidden = c.shape[-1]
    h_in = h
    if keep_h is not None:
        h_in = h * keep_h / (1.0 - o["recurrent_dropout"])
    a_x, a_h = x @ w["w_ih"], h_in @ w["w_hh"]
    if o["layer_norm"]:
        a_x = _layer_norm(a_x, o["layer_norm_epsilon"]) * w["ln_ih_scale"]
        a_h = _layer_norm(a_h, o["layer_norm_epsilon"]) * w["ln_hh_scale"]
    z = a_x + a_h + w["b"]
    z_i, z_f, z_g, z_o = (z[k * hidden : (k + 1) * hidden] for k in range(4))
    if o["peepholes"]:
        z_i = z_i + w["w_peep"][0] * c
        z_f = z_f + w["w_peep"][1] * c
    z_f = z_f + o["forget_bias"]
    i, g = _sigmoid(z_i), np.tanh(z_g)
    f = 1.0 - i if o["cifg"] else _sigmoid(z_f)
    c_new = f * c + i * g
    if trace is not None:
        trace.append(c_new)
    if o["cell_clip"] is not None:
        c_new = np.clip(c_new, -o["cell_clip"], o["cell_clip"])
    if o["peepholes"]:
        z_o = z_o + w["w_peep"][2] * c_new
    out_gate = _sigmoid(z_o)
    c_out = c_new
    if o["layer_norm"]:
        c_out = _layer_norm(c_new, o["layer_norm_epsilon"]) * w["ln_c_scale"] + w["ln_c_bias"]
    h_new = out_gate * np.tanh(c_out)
    if o["proj_size"] is not None:
        h_new = h_new @ w["w_hr"]
    if o["zoneout_h"] > 0.0:
        h_new = np.where(zone_h, h, h_new) if training else o["zoneout_h"] * h + (1 - o["zoneout_h"]) * h_new
    if o["zoneout_c"] > 0.0:
        c_new = np.where(zone_c, c, c_new) if training else o["zoneout_c"] * c + (1 - o["zoneout_c"]) * c_new
    return h_new, c_new


def _segments(resets_row, time):
    """[(first, last + 1)] of each segment of one row: a new one starts at every reset."""
    starts = [0] + [t for t in range(1, time) if resets_row is not None and resets_row[t]]
    ends = starts[1:] + [time]
    return list(zip(starts, ends, strict=True))


def ref_variant_lstm(
    weights,
    xs,
    options,
    h0=None,
    c0=None,
    seq_lengths=None,
    mask=None,
    resets=None,
    reverse=False,
    masked_output="zeros",
    masks=None,
    training=False,
    trace=None,
):
    """One layer, one direction over ``xs`` (B, T, D).

    ``masks``: ``{"input": (B, D), "recurrent": (B, R), "zoneout_h": (B, T, R),
    "zoneout_c": (B, T, H)}`` (bools, any may be missing) for a training call.

    Returns ``(h_final, c_final, hs)``: (B, R), (B, H), (B, T, R), float64.
    """
    o = {**OPTIONS, **options}
    masks = masks or {}
    xs = np.asarray(xs, np.float64)
    batch, time, _ = xs.shape
    hidden = np.asarray(weights["b"]).shape[0] // 4
    recurrent = hidden if o["proj_size"] is None else o["proj_size"]
    h0 = np.zeros((batch, recurrent)) if h0 is None else np.asarray(h0, np.float64)
    c0 = np.zeros((batch, hidden)) if c0 is None else np.asarray(c0, np.float64)
    hs = np.zeros((batch, time, recurrent))
    h_final, c_final = np.zeros((batch, recurrent)), np.zeros((batch, hidden))
    for seq in range(batch):
        x_seq = xs[seq]
        if masks.get("input") is not None:
            x_seq = x_seq * masks["input"][seq] / (1.0 - o["input_dropout"])
        length = time if seq_lengths is None else int(seq_lengths[seq])
        valid = [t < length and (mask is None or bool(mask[seq][t])) for t in range(time)]
        segments = _segments(None if resets is None else resets[seq], time)
        if reverse:
            segments = segments[::-1]
        h, c = h0[seq], c0[seq]
        for first, end in segments:
            h, c = h0[seq], c0[seq]  # every segment is read from the initial carry
            steps = range(end - 1, first - 1, -1) if reverse else range(first, end)
            for t in steps:
                if not valid[t]:
                    hs[seq, t] = h if masked_output == "previous" else 0.0
                    continue
                keep_h = None if masks.get("recurrent") is None else masks["recurrent"][seq]
                zone_h = None if masks.get("zoneout_h") is None else masks["zoneout_h"][seq, t]
                zone_c = None if masks.get("zoneout_c") is None else masks["zoneout_c"][seq, t]
                h, c = ref_variant_cell(weights, h, c, x_seq[t], o, keep_h, zone_h, zone_c, training, trace)
                hs[seq, t] = h
        h_final[seq], c_final[seq] = h, c
    return h_final, c_final, hs


def ref_variant_stack(stack_weights, xs, options, seq_lengths=None, merge="concat"):
    """Layers of one or two directions (forward, backward), merged as Keras' ``Bidirectional``.

    Returns ``(finals, hs)``: ``finals[layer][direction] = (h, c)`` and the last layer's outputs.
    """
    hs = np.asarray(xs, np.float64)
    finals = []
    for directions in stack_weights:
        outputs, layer_finals = [], []
        for direction, weights in enumerate(directions):
            h, c, out = ref_variant_lstm(weights, hs, options, seq_lengths=seq_lengths, reverse=direction == 1)
            outputs.append(out)
            layer_finals.append((h, c))
        if len(outputs) == 1:
            hs = outputs[0]
        elif merge == "concat":
            hs = np.concatenate(outputs, axis=-1)
        else:
            hs = outputs[0] + outputs[1]
        finals.append(tuple(layer_finals))
    return tuple(finals), hs
