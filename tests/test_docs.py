"""The documents as a newcomer uses them: snippets that run as written, links that lead on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
PATH_MENTION = re.compile(r"`((?:docs|tools|gateway|clients|mmapstore|tests)/[\w./-]+)`")


def blocks(document: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(document.read_text()) if lang == language]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_python_snippets_are_valid_python_as_written(document: Path) -> None:
    for number, snippet in enumerate(blocks(document, "python")):
        compile(snippet, f"{document.name} snippet {number}", "exec")  # top-level await fails


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_links_and_paths_stay_inside_the_repository(document: Path) -> None:
    text = document.read_text()
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://")):
            continue
        resolved = (document.parent / target).resolve()
        assert resolved.is_relative_to(ROOT), f"{document.name} links outside: {target}"
        assert resolved.exists(), f"{document.name} links to nothing: {target}"
    assert "../shared" not in text, f"{document.name} points outside the repository"
    for mentioned in PATH_MENTION.findall(text):
        assert (ROOT / mentioned.rstrip(".")).exists(), f"{document.name}: no {mentioned}"


def test_shell_examples_use_nothing_a_fresh_machine_lacks() -> None:
    for document in DOCUMENTS:
        for tool in ("socat", "nc -U", "jq "):
            assert tool not in document.read_text(), f"{document.name} relies on {tool!r}"


def test_the_readme_says_where_the_gateway_command_lives() -> None:
    assert ".venv/bin/gateway" in (ROOT / "README.md").read_text()
