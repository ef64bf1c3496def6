"""mkdocs hooks for the docs site (mkdocs.yml names this file; .ci/docs builds the site).

The pages in docs/ are read in three places: on the site, on the repository's own pages (GitHub renders
them) and in a terminal (`jaxlstm docs NAME` prints them from the installed package). Two things differ
on the site, and these hooks handle them at build time, leaving the Markdown files as they are:

* A link from a page to a repository file outside docs/, e.g. `[RESULTS](../benchmarks/RESULTS.md)`,
  works on GitHub but has no page on the site, and the project has no published repository URL to point
  it at. Such a link becomes the file's path as code (`benchmarks/RESULTS.md`), so the reader knows where
  to look. A link to a file that does not exist in the repository is still reported as broken.
* docs/examples.md repeats the README's table of example results. Every row of that table must be in
  the page word for word, or the build warns (and `--strict` fails), so the two cannot drift apart.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.jaxlstm")

# A Markdown link or image whose target leaves docs/: [text](../path#fragment)
_OUTSIDE_LINK = re.compile(r"(!?)\[([^\]\n]*)\]\((\.\./[^)\s#]+)(#[^)\s]*)?\)")


def _repository(config) -> Path:
    return Path(config["config_file_path"]).resolve().parent


def _outside_links(markdown: str, page_path: str, docs_dir: Path, repository: Path) -> str:
    """``markdown`` with each link to a repository file outside docs/ turned into that file's path as code."""
    out, fenced = [], False
    for line in markdown.split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        if not fenced:
            line = _OUTSIDE_LINK.sub(lambda match: _as_path(match, page_path, docs_dir, repository), line)
        out.append(line)
    return "\n".join(out)


def _as_path(match: re.Match, page_path: str, docs_dir: Path, repository: Path) -> str:
    image, text, target, _fragment = match.groups()
    resolved = (docs_dir / posixpath.dirname(page_path) / target).resolve()
    try:
        relative = resolved.relative_to(repository).as_posix()
    except ValueError:  # outside the repository: leave it to mkdocs, which reports it
        return match.group(0)
    if resolved.is_relative_to(docs_dir.resolve()):
        return match.group(0)  # back inside docs/ (e.g. ../docs/x.md): an ordinary link
    if not resolved.exists():
        log.warning("Doc file '%s' links to '%s', which is not in the repository (%s).", page_path, target, relative)
        return match.group(0)
    if image:
        log.warning("Doc file '%s' shows the image '%s' from outside docs/; move it into docs/.", page_path, target)
        return match.group(0)
    code = f"`{relative}`"
    return code if text.strip("` ") == relative else f"{text} ({code} in the repository)"


def _check_examples_table(markdown: str, page_path: str, repository: Path) -> None:
    """Warns for each row of the README's table of example results that the page does not repeat."""
    readme = (repository / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Examples\n(.*?)(?=^## )", readme, flags=re.S | re.M)
    rows = [line for line in (section.group(1) if section else "").splitlines() if line.startswith("|")]
    if not rows:
        log.warning("README.md has no table under '## Examples' for %s to repeat.", page_path)
    lines = set(markdown.splitlines())
    for row in rows:
        if row not in lines:
            log.warning("Doc file '%s' lacks this row of README.md's examples table (copy it): %s", page_path, row)


def on_page_markdown(markdown: str, page, config, files) -> str:
    repository = _repository(config)
    page_path = page.file.src_uri
    if page_path == "examples.md":
        _check_examples_table(markdown, page_path, repository)
    return _outside_links(markdown, page_path, Path(config["docs_dir"]), repository)


# ----------------------------------------------------------------------------- docstrings on the site
# jaxlstm's docstrings are written for help() and doctest: `>>>` examples, `::` literal blocks and reST
# tables. Markdown would render a `>>>` line as a quote (and `x["a"]["b"]` in it as a link), so this griffe
# extension (mkdocs.yml lists it for mkdocstrings) fences those blocks as code before they are rendered.

try:
    import griffe
except ImportError:  # the hooks alone do not need it
    griffe = None


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _fence_blocks(text: str) -> str:
    """``text`` with each doctest block, ``::`` literal block and reST simple table put in a code fence."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        indent = line[: len(line) - len(stripped)]
        if stripped.startswith(">>>"):  # a doctest: up to the next blank line
            end = i
            while end < len(lines) and lines[end].strip():
                end += 1
            out += [f"{indent}```pycon", *lines[i:end], f"{indent}```"]
            i = end
        elif re.fullmatch(r"=+( +=+)+", stripped):  # a reST simple table: three rules of = signs
            rules, end = 0, i
            while end < len(lines) and rules < 3:
                rules += bool(re.fullmatch(r"=+( +=+)+", lines[end].strip()))
                end += 1
            out += [f"{indent}```text", *lines[i:end], f"{indent}```"]
            i = end
        elif stripped.endswith("::") and i + 2 < len(lines) and not lines[i + 1].strip():
            out.append(line[:-1])  # "For example::" reads "For example:"
            start = end = i + 2
            while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > len(indent)):
                end += 1
            while end > start and not lines[end - 1].strip():
                end -= 1
            block = [candidate[len(indent) + 4 :] if candidate.strip() else "" for candidate in lines[start:end]]
            out += ["", f"{indent}```python", *[f"{indent}{code}" if code else "" for code in block], f"{indent}```"]
            i = end
        else:
            out.append(line)
            i += 1
    return "\n".join(out)


_ITEM_SECTION = re.compile(r"(\s*)(Args|Arguments|Parameters|Keyword Args|Other Parameters|Raises|Attributes):\s*")
_NAMES = re.compile(r"(\s*)([\w*]+(?:, [\w*]+)+)(:.*)")
_ITEM = re.compile(r"[\w*][\w*., ]*(\s*\([^)]*\))?:(\s|$)")


def _indent_continuations(text: str) -> str:
    """Google-style sections with each item's wrapped lines indented under it, as griffe reads them.

    help() shows ``Raises:`` items whose second line starts where the first did; griffe would read that
    line as a new, malformed item and drop it, so it is indented one level more. A list of names wrapped
    over several lines (``a, b,`` / ``c: what they are``) is joined into the one item it names, and the
    names of such an item are kept together (griffe would read ``b`` in ``a, b: ...`` as ``a``'s type).
    """
    lines, section_indent, item_indent, seen_item = text.split("\n"), None, None, False
    for i, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        header = _ITEM_SECTION.fullmatch(line)
        if header:
            section_indent, item_indent, seen_item = len(header.group(1)), None, False
            continue
        if section_indent is None or not line.strip():
            continue
        if indent <= section_indent:  # the section has ended
            section_indent = None
            continue
        if item_indent is None:
            item_indent = indent
        if indent == item_indent:
            if _ITEM.match(line.lstrip()):
                seen_item = True
                names = _NAMES.match(line)
                if names:  # "a, b: ..." names two items; a thin space keeps griffe from reading b as a type
                    lines[i] = names.group(1) + names.group(2).replace(", ", ",\u2009") + names.group(3)
            elif seen_item:
                lines[i] = "    " + line
            elif line.rstrip().endswith(",") and i + 1 < len(lines):  # "a, b,\n c: ..." names one item
                lines[i + 1] = line.rstrip() + " " + lines[i + 1].lstrip()
                lines[i] = None
    return "\n".join(line for line in lines if line is not None)


if griffe is not None:

    class FenceDocstringBlocks(griffe.Extension):
        """Fences doctest blocks, ``::`` literal blocks and reST tables in every docstring."""

        def on_object(self, *, obj, **kwargs) -> None:
            if obj.docstring is not None:
                obj.docstring.value = _fence_blocks(_indent_continuations(obj.docstring.value))
