"""The documentation says what the code does: docs/config.md is generated from the key tables and
current, the keys the pages name exist, links lead somewhere, and the README stays short."""

import re
from pathlib import Path

import pytest

from conftest import REPO
from jft import defaults
from jft.config import leaf_keys

DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [REPO / "README.md", *DOCS]


def test_the_config_reference_is_current():
    assert (REPO / "docs" / "config.md").read_text() == defaults.reference(), (
        "docs/config.md is not what jft/defaults.py says: run `jft config --reference > docs/config.md`"
    )


def test_the_readme_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


@pytest.mark.parametrize(
    "page, stage, make",
    [("pretraining.md", "pretraining", defaults.pretrain), ("finetuning.md", "fine-tuning", defaults.finetune)],
)
def test_the_key_tables_name_real_keys(page, stage, make):
    text = (REPO / "docs" / page).read_text()
    table = text.split(f"| {stage} | what it is |")[1].split("\n\n")[0]
    named = {key for row in table.splitlines()[2:] for key in re.findall(r"`([a-z_.]+)`", row.split("|")[1])}
    assert named and named <= set(leaf_keys(make())), named - set(leaf_keys(make()))


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lowercase, punctuation dropped, spaces as dashes."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_relative_links_lead_to_a_file_and_a_heading(page):
    broken = []
    for target in re.findall(r"\]\(([^)]+)\)", page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in _anchors(file)):
            broken.append(target)
    assert broken == []
