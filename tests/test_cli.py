"""The ``jaxlstm`` command: ``jaxlstm explain ...`` (and ``--plot``) and ``jaxlstm docs``, run in-process and
once as a subprocess."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

from jaxlstm.__main__ import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BASIC = ["explain", "--batch", "4", "--time", "10", "--input", "8", "--units", "32"]


def test_explain_prints_the_walk_through(capsys):
    assert main(BASIC) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith("jl.LSTM(32) on x of shape (batch, time, input) = (4, 10, 8)")
    assert "not 32 vectors" in out
    assert "4·(32·(8+32)+32)" in out and "5,248" in out


def test_explain_all_options(capsys):
    argv = BASIC + ["--layers", "2", "--bidirectional", "--merge", "sum", "--last-only"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("jl.LSTM(32, num_layers=2, bidirectional=True, merge='sum', return_sequences=False)")
    assert "9. model output returned (B, H) = (4, 32) last step only" in " ".join(out.split())
    assert "27,136" in out


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--units", "0", "jaxlstm explain: error: --units must be an int >= 1, got 0"),
        ("--batch", "-3", "jaxlstm explain: error: --batch must be an int >= 1, got -3"),
        ("--input", "0", "jaxlstm explain: error: --input must be an int >= 1, got 0"),
        ("--layers", "0", "jaxlstm explain: error: --layers must be an int >= 1, got 0"),
        (
            "--proj-size",
            "0",
            "jaxlstm explain: error: --proj-size must be None (no projection) or an int >= 1, got 0 "
            "(PyTorch's proj_size=0 is jaxlstm's None)",
        ),
        ("--proj-size", "40", "jaxlstm explain: error: --proj-size must be smaller than units: got --proj-size=40"),
    ],
)
def test_invalid_values_give_one_line_and_exit_2(capsys, flag, value, message):
    argv = list(BASIC)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(message)
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        [],  # no command
        ["explain"],  # missing the required sizes
        BASIC[:-2],  # missing --units
        BASIC[:-1] + ["many"],  # not an int
        BASIC + ["--merge", "max"],  # not a merge mode
        BASIC + ["--bogus"],
        ["frobnicate"],
    ],
    ids=["no-command", "no-sizes", "no-units", "units-not-int", "bad-merge", "unknown-flag", "unknown-command"],
)
def test_bad_arguments_exit_2(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "usage: jaxlstm" in err
    assert "Traceback" not in err


def test_help_and_version(capsys):
    assert main(["explain", "--help"]) == 0
    assert "--units H" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("jaxlstm ")


def test_plot_rejects_unknown_format(capsys, tmp_path):
    assert main(BASIC + ["--plot", str(tmp_path / "net.jpg")]) == 2
    assert "--plot must name a .png, .svg or .pdf file" in capsys.readouterr().err
    assert not (tmp_path / "net.jpg").exists()


def test_plot_into_missing_directory_exits_1(capsys, tmp_path):
    assert main(BASIC + ["--plot", str(tmp_path / "missing" / "net.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("jaxlstm explain: error: cannot write")
    assert "Traceback" not in err


PLOTS = {
    "one-layer": ["--time", "10"],
    "two-layers-bidirectional": ["--time", "10", "--layers", "2", "--bidirectional"],
    "T3": ["--time", "3"],
    "T50": ["--time", "50"],
    "bidirectional-last-only": ["--time", "4", "--bidirectional", "--merge", "ave", "--last-only"],
}


@pytest.mark.parametrize("extra", PLOTS.values(), ids=PLOTS.keys())
def test_plot_png(capsys, tmp_path, extra):
    import matplotlib.image

    path = tmp_path / "net.png"
    argv = ["explain", "--batch", "4", "--input", "8", "--units", "32", *extra, "--plot", str(path)]
    assert main(argv) == 0
    assert f"Diagram written to {path}" in capsys.readouterr().out
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert width > 400 and height > 300
    assert width > height  # time runs left to right
    assert image.std() > 0.05  # not blank


def test_more_layers_make_a_taller_picture(tmp_path):
    import matplotlib.image

    heights = []
    for layers in ("1", "3"):
        path = tmp_path / f"net{layers}.png"
        assert main(BASIC + ["--layers", layers, "--plot", str(path)]) == 0
        heights.append(matplotlib.image.imread(path).shape[0])
    assert heights[1] > heights[0]


def test_plot_svg(tmp_path):
    path = tmp_path / "net.svg"
    assert main(BASIC + ["--bidirectional", "--plot", str(path)]) == 0
    text = path.read_text()
    assert "<svg" in text


def test_draw_api_elides_the_middle():
    from jaxlstm.diagram import draw, shown_steps
    from jaxlstm.explain import explain

    assert shown_steps(6) == list(range(6))
    assert shown_steps(7) == [0, 1, 2, None, 6]
    fig = draw(explain(2, 50, 3, 5))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "one cell, applied T times; units = H = size of the state vector" in texts
    assert sum(text.startswith("LSTM cell") for text in texts) == 4  # steps 0, 1, 2 and 49
    assert "…" in texts
    assert any("$x_{49}$ (2, 3)" == text for text in texts)  # input arrow of the last step, with its shape
    assert any("$h_{49}$ (2, 5)" == text for text in texts)  # output arrow


def test_python_dash_m_subprocess():
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONIOENCODING="utf-8", PYTHONPATH=path)
    result = subprocess.run(
        [sys.executable, "-m", "jaxlstm", *BASIC, "--layers", "2"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "jl.LSTM(32, num_layers=2)" in result.stdout
    assert "13,568" in result.stdout


@pytest.mark.parametrize("bidirectional", [False, True])
def test_draw_labels_a_projection_with_p_and_c_with_h(bidirectional):
    """Under proj_size, h and the output are P wide while c stays H wide; the picture must say so."""
    from jaxlstm.diagram import draw
    from jaxlstm.explain import explain

    e = explain(2, 3, 4, 6, proj_size=5, bidirectional=bidirectional)
    texts = [t.get_text() for t in draw(e).axes[0].texts]
    assert "h (2, 5)" in texts and "c (2, 6)" in texts
    assert "c (2, 5)" not in texts
    width = "2P" if bidirectional else "P"
    assert f"output, every step:\n(B, T, {width}) = {e.output_shape}" in texts
    assert any("ONE 5-vector h_t" in text for text in texts)
    call = next(text for text in texts if text.startswith("jl.LSTM(6, "))
    assert "proj_size=5" in call and "P = proj_size = 5" in call
    assert any(text.endswith("+ w_hr") for text in texts)  # the projection's weights are listed
    if bidirectional:
        assert "merge='concat'\n[→h, ←h]: 2P = 10" in texts


# --------------------------------------------------------------------------- --cell gru


def test_cell_gru_prints_the_gru_walk_through(capsys):
    assert main(BASIC + ["--cell", "gru"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith("jl.GRU(32) on x of shape (batch, time, input) = (4, 10, 8)")
    words = " ".join(out.split())
    for phrase in (
        "r = sig(a_r + u_r) (B, H) = (4, 32)",
        "n = tanh(a_n + r*u_n)",
        "h = (1-z)*n + z*h (B, H) = (4, 32) = this step's output h_t",
        "h alone (there is no c), is (B, H) = (4, 32)",
        "n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_(t-1) + b_hn))",
        "3·(32·(8+32)+2·32) 4,032",  # w_ih 8·96 + w_hh 32·96 + b_ih 96 + b_hh 96
    ):
        assert phrase in words
    assert "c = sig(f)" not in out and "(B, 4H)" not in out


def test_cell_gru_with_every_stacking_option(capsys):
    argv = BASIC + ["--cell", "gru", "--layers", "2", "--bidirectional", "--merge", "sum", "--last-only"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("jl.GRU(32, num_layers=2, bidirectional=True, merge='sum', return_sequences=False)")
    assert "9. model output returned (B, H) = (4, 32) last step only" in " ".join(out.split())
    # two layers of two directions: 3·(H·(D+H)+2H) each, layer 1 reading H = 32 (sum) features
    total = 2 * 3 * (32 * (8 + 32) + 2 * 32) + 2 * 3 * (32 * (32 + 32) + 2 * 32)
    assert f"{total:,}" in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--proj-size", "16"], "--proj-size=16 is an LSTM option: --cell gru takes none of"),
        (["--peepholes"], "--peepholes=True is an LSTM option"),
        (["--layer-norm"], "--layer-norm=True is an LSTM option"),
        (["--cifg"], "--cifg=True is an LSTM option"),
        (["--plot", "net.png"], "--plot draws LSTM cells only, got --cell gru"),
    ],
)
def test_cell_gru_refuses_lstm_options_in_one_line(capsys, tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    assert main(BASIC + ["--cell", "gru", *extra]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"jaxlstm explain: error: {message}")
    if "LSTM option" in message:  # the choices: the LSTM-only flags and the cells
        assert "--proj-size, --peepholes, --layer-norm, --cifg" in err and "--cell is one of 'lstm', 'gru'" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "net.png").exists()


def test_unknown_cell_exits_2_naming_the_choices(capsys):
    assert main(BASIC + ["--cell", "rnn"]) == 2
    err = capsys.readouterr().err
    assert "usage: jaxlstm" in err
    assert "argument --cell: invalid choice: 'rnn' (choose from" in err and "'lstm', 'gru'" in err.replace('"', "'")
    assert "Traceback" not in err


def test_choices_come_from_the_library():
    """--cell and --merge offer what jl.explain and the layers accept, written once in the library."""
    import argparse

    from jaxlstm import stack
    from jaxlstm.__main__ import _parser
    from jaxlstm.explain import CELLS

    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    options = {a.dest: a for a in commands.choices["explain"]._actions}
    assert options["merge"].choices is stack.MERGE_MODES
    assert options["cell"].choices is CELLS and tuple(CELLS) == ("lstm", "gru")


def test_help_names_the_cell_option(capsys):
    assert main(["explain", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--cell {lstm,gru}" in help_text
    assert "LSTM only: project h to P < H features" in help_text


# --------------------------------------------------------------------------- --last-only's help


def test_last_only_help_gives_the_width_of_a_bidirectional_concat(capsys):
    """--last-only returns (B, F): 2H for bidirectional concat, as the layer itself returns."""
    import jax
    import jax.numpy as jnp

    import jaxlstm as jl

    assert main(["explain", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(B, F), instead of every step, (B, T, F)" in help_text
    assert "2H for --bidirectional with --merge concat" in help_text
    layer = jl.LSTM(4, bidirectional=True, return_sequences=False)
    x = jax.ShapeDtypeStruct((3, 5, 2), jnp.float32)
    variables = jax.eval_shape(layer.init, jax.random.key(0), x)
    assert jax.eval_shape(layer.apply, variables, x).shape == (3, 2 * 4)
    assert main(BASIC + ["--bidirectional", "--last-only"]) == 0
    assert "returned (B, 2H) = (4, 64)" in " ".join(capsys.readouterr().out.split())


# --------------------------------------------------------------------------- jaxlstm docs

DOCS = pathlib.Path(ROOT) / "docs"


def test_docs_lists_every_guide(capsys):
    assert main(["docs"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines()[1:]]
    assert names[:4] == ["shapes", "sequence-state", "variants", "performance"]
    assert sorted(names) == sorted(path.stem for path in DOCS.glob("*.md"))
    assert "Shapes in jaxlstm" in out


def test_docs_prints_a_guide(capsys):
    assert main(["docs", "shapes"]) == 0
    assert capsys.readouterr().out == (DOCS / "shapes.md").read_text(encoding="utf-8").rstrip("\n") + "\n"
    assert main(["docs", "docs/variants.md"]) == 0  # the path an error message names works too
    assert capsys.readouterr().out.startswith("# LSTM variants\n")


def test_docs_prints_one_section(capsys):
    text = (DOCS / "shapes.md").read_text(encoding="utf-8")
    expected = text[text.index("## Inputs\n") : text.index("## Carry\n")].rstrip("\n") + "\n"
    assert main(["docs", "docs/shapes.md#inputs"]) == 0
    assert capsys.readouterr().out == expected
    assert main(["docs", "shapes#inputs"]) == 0
    assert capsys.readouterr().out == expected


def test_docs_resolves_every_section_an_error_message_points_to(capsys):
    """Each `docs/<guide>.md#<section>` the library names, literally or through its helpers, prints."""
    from jaxlstm import _checks, variants

    pointers = set()
    for path in (pathlib.Path(ROOT) / "jaxlstm").rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        pointers |= set(re.findall(r"docs/([\w-]+)\.md#([\w-]+)", source))
        pointers |= {("shapes", anchor) for anchor in re.findall(r'_see\(\s*"([\w-]+)"\s*\)', source)}
    pointers |= {("shapes", anchor) for anchor in _checks._SECTIONS.values()}
    pointers |= {("variants", anchor) for anchor in variants.SECTIONS.values()}
    assert {("shapes", "inputs"), ("variants", "projection")} <= pointers
    for guide, anchor in sorted(pointers):
        assert main(["docs", f"{guide}#{anchor}"]) == 0, (guide, anchor)
        out = capsys.readouterr().out
        assert out.startswith("#"), (guide, anchor)


@pytest.mark.parametrize(
    "name, message",
    [
        ("nope", "jaxlstm docs: error: no guide 'nope'; the guides are shapes, sequence-state, variants, performance"),
        ("shapes#nope", "jaxlstm docs: error: shapes has no section #nope; its sections are shapes-in-jaxlstm, "),
    ],
)
def test_docs_unknown_guide_or_section_exits_2(capsys, name, message):
    assert main(["docs", name]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(message)
    assert len(err.strip().splitlines()) == 1


def test_docs_reads_the_installed_package_data_first(capsys, monkeypatch, tmp_path):
    """A wheel ships the guides as jaxlstm/guides/*.md; those win over a source checkout's docs/."""
    import jaxlstm.__main__ as cli

    (tmp_path / "shapes.md").write_text(
        "# Shapes\n\n## Inputs\n\n```python\n# a comment, not a heading\n```\n\n## Carry\n\nh, c\n", encoding="utf-8"
    )
    (tmp_path / "extra.md").write_text("# Extra page\n", encoding="utf-8")
    monkeypatch.setattr(cli.importlib.resources, "files", lambda package: tmp_path)
    assert main(["docs"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["shapes", "extra"]
    assert main(["docs", "shapes#inputs"]) == 0
    assert capsys.readouterr().out == "## Inputs\n\n```python\n# a comment, not a heading\n```\n"
