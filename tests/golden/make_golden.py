"""Golden outputs and gradients of jaxlstm's loops, recorded from the code before the engine rewrite.

Why this exists
---------------
The loop/gradient engine (``jaxlstm/scan.py``, ``jaxlstm/variants.py``,
``jaxlstm/stack.py``) is being rewritten. ``golden.npz`` records what the
code at commit 6a551bf computed for a grid of small cases: every output
(``hs``, the final carries), the value of a fixed scalar loss, and its
gradient with respect to every parameter leaf, the inputs and the initial
carries (and ``reset_carry`` where one is given), together with the dtype of
every output. ``tests/test_golden.py`` recomputes each case with the working
tree and compares:

* ``kind="plain"`` cases (``jl.lstm``, plain stacks): bit-identical values and
  equal dtypes;
* ``kind="variant"`` cases (``jl.lstm_variant`` and variant stacks): equal
  dtypes and shapes, values within float32 rounding (see ``VARIANT_RTOL`` and
  ``VARIANT_ATOL`` in tests/test_golden.py).

The case definitions live here only, in ``CASES`` (name -> ``Case``);
``compute_group(group)`` runs the cases of one of ``GROUPS`` under one
``jax.jit`` and returns ``{name: {key: array}}``. The test imports
both, so the generator and the test can't drift apart.

Deliberately NOT recorded (known bugs, to change on purpose): NaN inside the
padded steps of a variant's inputs, and a variant called with a bfloat16
carry and float32 inputs.

Pinned as it is today, worth knowing: a reset flag on a step that doesn't
count (past ``seq_lengths`` or masked out) still restarts the carry. In
``lstm.seq_mask_resets.fwd.*`` row 1 (length 3, a reset at step 3) the final
carry is therefore ``reset_carry``, not the carry after step 2; read
backward (``.rev.*``) its valid steps start from ``reset_carry``.
``variant.forget_bias.*`` (and any variant call that is a plain LSTM after
all) runs through ``jl.lstm`` today but is compared as a variant case.

Regenerate (only when a change of values is intended and understood)
--------------------------------------------------------------------
From a pristine checkout of the commit whose behaviour should be pinned, so
that uncommitted edits in the working tree can't leak into the goldens::

    git worktree add /tmp/golden-base <commit>
    PYTHONPATH=/tmp/golden-base python tests/golden/make_golden.py   # prints jaxlstm.__file__: check it
    git worktree remove --force /tmp/golden-base

Run it from the repository root with the project's venv; it writes
``tests/golden/golden.npz`` next to this file. Values depend on the JAX/XLA
version and on the CPU (XLA:CPU's code generation), so bit-identical
comparisons hold on the machine and stack they were recorded with
(``meta/*`` keys in the npz say which); the dropout cases also depend on JAX's
PRNG bits for ``jax.random.key(1)``. The inputs themselves come from NumPy
seeds and are stored too (``<case>/inputs``), so a change in NumPy's
generator shows as "inputs changed", not as an engine failure.
"""

from __future__ import annotations

import dataclasses
import pathlib
import platform
import sys
import zlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

# The test suite's settings (tests/conftest.py): the goldens must be computed under them.
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

import jaxlstm as jl  # noqa: E402

GOLDEN = pathlib.Path(__file__).with_name("golden.npz")

B, T, D, H, P = 2, 5, 3, 4, 2
SEQ_LENGTHS = np.array([5, 3], np.int32)
# Fixed patterns (rather than random draws) so every flag is exercised: skipped steps inside and
# at the end of a row, and resets at step 0, in the middle and at the last step.
MASK = np.array([[1, 0, 1, 1, 0], [1, 1, 0, 1, 1]], bool)
RESETS = np.array([[0, 0, 1, 0, 1], [1, 0, 0, 1, 0]], bool)
DROPOUT_SEED = 1

# ----------------------------------------------------------------------------- inputs


def _normal(rng, shape, scale=1.0, dtype=np.float32):
    return jnp.asarray((scale * rng.standard_normal(shape)).astype(np.float32), dtype)


def _uniform(rng, shape, bound):
    return jnp.asarray(rng.uniform(-bound, bound, shape).astype(np.float32))


def _lstm_params(rng, input_size=D, hidden=H, dtype=jnp.float32):
    """torch-like weights, U(-1/sqrt(H), 1/sqrt(H)), drawn with NumPy (independent of jax.random)."""
    bound = 1.0 / np.sqrt(hidden)
    params = jl.LSTMParams(
        _uniform(rng, (input_size, 4 * hidden), bound),
        _uniform(rng, (hidden, 4 * hidden), bound),
        _uniform(rng, (4 * hidden,), bound),
    )
    return jax.tree.map(lambda a: a.astype(dtype), params)


def _variant_params(rng, variant, input_size=D, hidden=H):
    """``VariantParams`` with every extra weight far from its neutral init (peepholes not 0, gains not 1)."""
    bound = 1.0 / np.sqrt(hidden)
    recurrent = hidden if variant.proj_size is None else variant.proj_size
    fields = dict(
        w_ih=_uniform(rng, (input_size, 4 * hidden), bound),
        w_hh=_uniform(rng, (recurrent, 4 * hidden), bound),
        b=_uniform(rng, (4 * hidden,), bound),
    )
    if variant.proj_size is not None:
        fields["w_hr"] = _uniform(rng, (hidden, variant.proj_size), bound)
    if variant.peepholes:
        fields["w_peep"] = _normal(rng, (3, hidden), 0.5)
    if variant.layer_norm:
        fields["ln_ih_scale"] = 1.0 + _normal(rng, (4 * hidden,), 0.3)
        fields["ln_hh_scale"] = 1.0 + _normal(rng, (4 * hidden,), 0.3)
        fields["ln_c_scale"] = 1.0 + _normal(rng, (hidden,), 0.3)
        fields["ln_c_bias"] = _normal(rng, (hidden,), 0.3)
    return jl.VariantParams(**fields)


def _carry(rng, batch, recurrent=H, hidden=H, h_dtype=jnp.float32, c_dtype=jnp.float32):
    return jl.LSTMCarry(_normal(rng, (*batch, recurrent), 0.5, h_dtype), _normal(rng, (*batch, hidden), 0.5, c_dtype))


# ----------------------------------------------------------------------------- the cases


@dataclasses.dataclass(frozen=True)
class Case:
    """One golden case.

    ``kind``: "plain" (compared bit for bit) or "variant" (within float32 rounding).
    ``build(rng)`` returns ``(apply, diff, aux)``: ``apply(diff, aux) -> (final, hs)``;
    ``diff`` holds what is differentiated (params, xs, carry, reset_carry),
    ``aux`` the rest that is traced (seq_lengths, mask, resets, dropout_key).
    """

    kind: str
    build: Callable


# Per-step flags: name -> (options for the call, whether a reset_carry is given).
PLAIN_FLAGS = {
    "none": ({}, False),
    "seq_lengths": (dict(seq_lengths=SEQ_LENGTHS), False),
    "mask": (dict(mask=MASK), False),
    "resets": (dict(resets=RESETS), True),
    "seq_mask_resets": (dict(seq_lengths=SEQ_LENGTHS, mask=MASK, resets=RESETS), True),
    "previous": (dict(mask=MASK, masked_output="previous"), False),
}
VARIANT_FLAGS = {
    "none": ({}, False),
    "seq_lengths": (dict(seq_lengths=SEQ_LENGTHS), False),
    "mask_resets": (dict(mask=MASK, resets=RESETS), True),
}
_TRACED = ("seq_lengths", "mask", "resets")


def _split_flags(flags):
    """(traced flags, static options) of a flags dict."""
    aux, static = {}, {}
    for name, value in flags.items():
        if name in _TRACED:
            aux[name] = jnp.asarray(value)
        else:
            static[name] = value
    return aux, static


def _layer_case(
    kind,
    fn,
    make_params,
    *,
    flags=None,
    reset_carry=False,
    batch=(B,),
    x_dtype=jnp.float32,
    carry="random",
    recurrent=H,
    key=False,
    **static,
):
    """A case of ``jl.lstm`` or ``jl.lstm_variant`` (``fn``) on one layer.

    ``flags``: seq_lengths, mask, resets (traced) and masked_output; ``reset_carry``: give a random
    one; ``carry``: "random" (float32), None (the default zeros) or (h dtype, c dtype); ``recurrent``:
    the size of h; ``key``: pass ``dropout_key=jax.random.key(DROPOUT_SEED)``; ``static``: the rest
    of ``fn``'s keyword arguments.
    """

    def build(rng):
        params = make_params(rng)
        xs = _normal(rng, (*batch, T, D), dtype=x_dtype)
        diff = dict(params=params, xs=xs)
        if carry == "random":
            diff["carry"] = _carry(rng, batch, recurrent)
        elif carry is not None:  # (h dtype, c dtype)
            diff["carry"] = _carry(rng, batch, recurrent, h_dtype=carry[0], c_dtype=carry[1])
        if reset_carry:
            diff["reset_carry"] = _carry(rng, batch, recurrent)
        aux, more_static = _split_flags(flags or {})
        if key:
            aux["dropout_key"] = jax.random.key(DROPOUT_SEED)
        options = {**static, **more_static}

        def apply(diff, aux):
            carry, reset_carry = diff.get("carry"), diff.get("reset_carry")
            return fn(diff["params"], diff["xs"], carry, reset_carry=reset_carry, **aux, **options)

        return apply, diff, aux

    return Case(kind, build)


def _stack_case(kind, *, variant=None, flags=None, **static):
    """A 2-layer bidirectional ``jl.stacked_lstm`` ("concat") with random initial carries."""

    def build(rng):
        recurrent = H if variant is None else variant.recurrent_size(H)
        stack = tuple(
            tuple(
                _lstm_params(rng, width, H) if variant is None else _variant_params(rng, variant, width, H)
                for _ in range(2)
            )
            for width in (D, 2 * recurrent)
        )
        xs = _normal(rng, (B, T, D))
        carries = tuple(tuple(_carry(rng, (B,), recurrent) for _ in range(2)) for _ in range(2))
        aux, more_static = _split_flags(flags or {})
        if static.get("dropout"):
            aux["dropout_key"] = jax.random.key(DROPOUT_SEED)
        options = {**static, **more_static}

        def apply(diff, aux):
            return jl.stacked_lstm(diff["params"], diff["xs"], diff["carry"], variant=variant, **aux, **options)

        return apply, dict(params=stack, xs=xs, carry=carries), aux

    return Case(kind, build)


def _plain_cases():
    cases = {}
    plain = _lstm_params
    for flag, (flags, reset) in PLAIN_FLAGS.items():
        for reverse in (False, True):
            for gradient in ("fused", "autodiff"):
                name = f"lstm.{flag}.{'rev' if reverse else 'fwd'}.{gradient}"
                cases[name] = _layer_case(
                    "plain", jl.lstm, plain, flags=flags, reset_carry=reset, reverse=reverse, gradient=gradient
                )
    # Fewer extras than the grid above, to keep the test fast (each compiles in 1-3 s).
    cases["lstm.hard_sigmoid"] = _layer_case("plain", jl.lstm, plain, gate_fn=jax.nn.hard_sigmoid)
    # T = 5 in chunks of 2: two whole chunks and a remainder of one step.
    cases["lstm.checkpoint2"] = _layer_case("plain", jl.lstm, plain, checkpoint_every=2)
    cases["lstm.checkpoint2.seq_lengths.rev"] = _layer_case(
        "plain", jl.lstm, plain, checkpoint_every=2, flags={"seq_lengths": SEQ_LENGTHS}, reverse=True
    )
    # bfloat16 inputs with float32 params and a float32 carry (promoted: computes in float32 today).
    cases["lstm.bf16_inputs"] = _layer_case("plain", jl.lstm, plain, x_dtype=jnp.bfloat16)
    # Mixed precision as the Flax modules do it: bfloat16 inputs, params and h, a float32 c.
    cases["lstm.bf16_mixed"] = _layer_case(
        "plain",
        jl.lstm,
        lambda rng: _lstm_params(rng, dtype=jnp.bfloat16),
        x_dtype=jnp.bfloat16,
        carry=(jnp.bfloat16, jnp.float32),
        flags={"seq_lengths": SEQ_LENGTHS},
    )
    # bfloat16 everywhere, no carry given: the default carry's c is float32.
    cases["lstm.bf16_default_carry"] = _layer_case(
        "plain", jl.lstm, lambda rng: _lstm_params(rng, dtype=jnp.bfloat16), x_dtype=jnp.bfloat16, carry=None
    )
    cases["lstm.batch_2x3.mask_resets.rev"] = _layer_case(
        "plain",
        jl.lstm,
        plain,
        batch=(2, 3),
        flags={"mask": np.stack([MASK] * 3, 1), "resets": np.stack([RESETS] * 3, 1)},
        reverse=True,
    )
    cases["lstm.single_sequence.seq_lengths.rev"] = _layer_case(
        "plain", jl.lstm, plain, batch=(), flags={"seq_lengths": np.int32(3)}, reverse=True
    )
    return cases


VARIANTS = {
    "proj": jl.LSTMVariant(proj_size=P),
    "peepholes": jl.LSTMVariant(peepholes=True),
    "layer_norm": jl.LSTMVariant(layer_norm=True),
    "cifg": jl.LSTMVariant(cifg=True),
    "forget_bias": jl.LSTMVariant(forget_bias=1.0),
    "cell_clip": jl.LSTMVariant(cell_clip=0.5),
    "zoneout_eval": jl.LSTMVariant(zoneout_h=0.3, zoneout_c=0.2),
    # training: the masks are drawn from dropout_key = jax.random.key(DROPOUT_SEED)
    "dropout_zoneout_train": jl.LSTMVariant(input_dropout=0.3, recurrent_dropout=0.3, zoneout_h=0.3, zoneout_c=0.2),
    "all": jl.LSTMVariant(proj_size=P, peepholes=True, layer_norm=True, cell_clip=0.5, zoneout_h=0.3, zoneout_c=0.2),
}


# Every (flags, direction) for the two combined variants; for the single options, whose steps share
# the variant loop and its flag handling, two of the six (both directions, every flag), to keep the
# test fast: each case compiles in about a second.
_FULL_GRID = [(flag, reverse) for flag in VARIANT_FLAGS for reverse in (False, True)]
_SHORT_GRID = [("seq_lengths", False), ("mask_resets", True)]


def _variant_cases():
    cases = {}
    for vname, variant in VARIANTS.items():
        for flag, reverse in _FULL_GRID if vname in ("all", "dropout_zoneout_train") else _SHORT_GRID:
            flags, reset = VARIANT_FLAGS[flag]
            cases[f"variant.{vname}.{flag}.{'rev' if reverse else 'fwd'}"] = _layer_case(
                "variant",
                jl.lstm_variant,
                lambda rng, variant=variant: _variant_params(rng, variant),
                flags=flags,
                reset_carry=reset,
                recurrent=variant.recurrent_size(H),
                key=vname.endswith("_train"),
                variant=variant,
                reverse=reverse,
            )
    return cases


def _stack_cases():
    seq = {"seq_lengths": SEQ_LENGTHS}
    return {
        "stack.bi_plain.seq_lengths": _stack_case("plain", flags=seq),
        "stack.bi_proj_peepholes.seq_lengths": _stack_case(
            "variant", variant=jl.LSTMVariant(proj_size=P, peepholes=True), flags=seq
        ),
        "stack.bi_plain.dropout": _stack_case("plain", flags=seq, dropout=0.5),
    }


CASES: dict[str, Case] = {**_plain_cases(), **_variant_cases(), **_stack_cases()}


# ----------------------------------------------------------------------------- computing one case


def _named(tree, prefix: str) -> dict:
    """``{prefix/path: leaf}``, the path from NamedTuple fields, tuple indices and dict keys."""

    def part(key):
        for attr in ("name", "key", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        raise TypeError(key)

    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join([prefix, *map(part, path)]): leaf for path, leaf in leaves}


def _outputs(final, hs) -> dict:
    return {"hs": hs, **_named(final, "final")}


def _prepare(name: str):
    """``(run, args, inputs)`` of case ``name``: ``run(*args) -> (outputs, loss, grads)``."""
    case = CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    apply, diff, aux = case.build(rng)
    final_shape, hs_shape = jax.eval_shape(apply, diff, aux)
    weights = {
        key: rng.standard_normal(leaf.shape).astype(np.float32) for key, leaf in _outputs(final_shape, hs_shape).items()
    }

    def loss(diff, aux, weights):
        """sum(hs * W1) + Σ sum(final.h * W2) + Σ sum(final.c * W3), in float32."""
        outputs = _outputs(*apply(diff, aux))
        return sum(jnp.sum(outputs[key].astype(jnp.float32) * weights[key]) for key in sorted(outputs))

    def run(diff, aux, weights):
        value, grads = jax.value_and_grad(loss)(diff, aux, weights)
        return _outputs(*apply(diff, aux)), value, grads

    inputs = {**_named(diff, "in"), **_named({k: v for k, v in aux.items() if k != "dropout_key"}, "in")}
    return run, (diff, aux, weights), inputs


def group_of(name: str) -> str:
    """The cases computed together under one ``jax.jit`` (one compilation, a few times cheaper than one
    per case): a case name without its last components, e.g. ``lstm.mask`` or ``variant.proj``."""
    family, rest = name.split(".", 1)
    if family == "lstm" and rest.split(".")[0] in PLAIN_FLAGS:
        return f"lstm.{rest.split('.')[0]}"
    if family == "variant":
        return f"variant.{rest.split('.')[0]}"
    return family if family == "stack" else f"{family}.extras"


GROUPS: dict[str, list[str]] = {}
for _name in CASES:
    GROUPS.setdefault(group_of(_name), []).append(_name)


def compute_group(group: str) -> dict[str, dict[str, np.ndarray]]:
    """Runs every case of ``group`` under one ``jax.jit``; ``{case name: {key: array}}``.

    Keys: ``hs`` and ``final/...`` (a forward-only call), ``loss`` and
    ``grad/...`` (one ``jax.value_and_grad`` call), their values as float32
    (bfloat16 converts exactly); ``dtypes``, strings ``"<key>=<dtype name>"``
    for each of those; ``inputs``, every input (params, xs, carries, flags) in
    key order, flattened to float32 and concatenated (to tell a change of
    NumPy's generator from a change of jaxlstm).
    """
    names = GROUPS[group]
    prepared = [_prepare(name) for name in names]
    runs = [run for run, _, _ in prepared]
    everything = jax.jit(lambda args: [run(*a) for run, a in zip(runs, args, strict=True)])(
        [args for _, args, _ in prepared]
    )
    records = {}
    for name, (outputs, value, grads), (_, _, inputs) in zip(names, everything, prepared, strict=True):
        results = {**outputs, "loss": value, **_named(grads, "grad")}
        record = {key: np.asarray(array.astype(jnp.float32)) for key, array in results.items()}
        record["dtypes"] = np.array([f"{key}={array.dtype}" for key, array in results.items()])
        record["inputs"] = np.concatenate(
            [np.asarray(jnp.asarray(inputs[key]).astype(jnp.float32)).ravel() for key in sorted(inputs)]
        )
        records[name] = record
    return records


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def meta() -> dict[str, np.ndarray]:
    """Where the goldens were computed (stored as ``meta/*``; informative, not compared)."""
    import jaxlib

    return {
        "meta/jax": np.array(jax.__version__),
        "meta/jaxlib": np.array(jaxlib.__version__),
        "meta/numpy": np.array(np.__version__),
        "meta/machine": np.array(f"{platform.machine()} {_cpu_model()}".strip()),
        "meta/device": np.array(str(jax.devices()[0].device_kind)),
    }


def main() -> None:
    print("jaxlstm from", jl.__file__, file=sys.stderr)
    data = meta()
    for group in GROUPS:
        for name, record in compute_group(group).items():
            for key, array in record.items():
                data[f"{name}/{key}"] = array
    np.savez_compressed(GOLDEN, **data)
    print(f"{len(CASES)} cases, {len(data)} arrays -> {GOLDEN} ({GOLDEN.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
