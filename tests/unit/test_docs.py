"""The README is a front page, and every page it and docs/ link to exists."""

import re
from pathlib import Path

import yaml

from extproc.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_is_a_front_page_of_at_most_300_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


def test_every_relative_link_of_the_readme_and_docs_resolves():
    broken = [
        f"{page.relative_to(ROOT)}: {target}"
        for page in PAGES
        for target in re.findall(r"\]\(([^)#\s]+)\)", page.read_text())
        if "://" not in target and not (page.parent / target).exists()
    ]
    assert broken == []


def test_the_readmes_minimal_config_loads_with_the_chain_it_describes():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## A minimal config") :]
    example = section[section.index("```yaml") + 7 : section.index("```", section.index("```yaml") + 7)]
    config = parse_config(example, "README.md", {"OPENAI_API_KEY": "a", "OPENAI_BACKUP_KEY": "b", "ANTHROPIC_API_KEY": "c"})
    assert config.chains["openai-main"].providers == ("openai-main", "openai-backup", "claude")
    assert 429 in config.chains["openai-main"].policy.status_codes and config.warnings == ()
    assert yaml.safe_load(example)["listeners"][0]["port"] == 12000
