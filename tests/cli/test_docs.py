"""The documentation mirrors the code: README is a front page with a table of contents,
the guides live in docs/, the references in docs/reference/ are the generated ones, and
every relative link in README, docs/ and runbooks/ reaches an existing file and heading."""

import os
import re

import pytest

from glmtts import reference

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def markdown_files():
    out = [os.path.join(ROOT, "README.md")]
    for d in ("docs", "docs/reference", "runbooks", "ops/kubernetes", "ops/prometheus", "ops/container"):
        full = os.path.join(ROOT, d)
        if os.path.isdir(full):
            out += [os.path.join(full, n) for n in sorted(os.listdir(full)) if n.endswith(".md")]
    return out


def anchors(path):
    """GitHub's heading anchors of a Markdown file."""
    out = set()
    with open(path, encoding="utf-8") as f:
        in_code = False
        for line in f:
            if line.startswith("```"):
                in_code = not in_code
            m = re.match(r"^#{1,6} (.*)$", line)
            if m and not in_code:
                a = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
                out.add(a)
    return out


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: os.path.relpath(p, ROOT))
def test_every_relative_link_reaches_a_file_and_a_heading(path):
    text = open(path, encoding="utf-8").read()
    text = re.sub(r"(?s)```.*?```", "", text)  # links in code blocks are examples
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        file_part, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        if not os.path.exists(dest):
            broken.append("%s (no such file)" % target)
        elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
            broken.append("%s (no such heading)" % target)
    assert not broken, "%s: %s" % (os.path.relpath(path, ROOT), broken)


def test_the_readme_is_a_front_page_with_a_table_of_contents():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert "## Contents" in text and "## The two commands" in text
    assert len(text.splitlines()) < 250, "README.md is a front page; guides go to docs/"
    for guide in ("docs/engines.md", "docs/configuration.md", "docs/service.md", "docs/batch.md",
                  "docs/watchdog.md", "docs/server.md", "docs/fleet.md", "docs/testing.md"):
        assert "(%s)" % guide in text, "the contents table lacks %s" % guide


@pytest.mark.parametrize("name", sorted(reference.DOCS))
def test_generated_references_are_current(name):
    with open(os.path.join(reference.directory(ROOT), name), encoding="utf-8") as f:
        assert f.read() == reference.DOCS[name](), "docs/reference/%s is stale: python -m glmtts.reference --write" % name


def test_generated_documents_print_to_the_stdout_of_the_moment(capsys):
    """`python -m glmtts.reference` (glmtts/generated.py sync) prints where sys.stdout is
    when it runs, not where it was at import: a redirect or a pipe wrapper is honoured."""
    assert reference.main([]) == 0
    assert "# Failure signatures" in capsys.readouterr().out
