"""The README a newcomer reads first: its two commands are the ones CI and the quick start use, and
every page or picture it links to exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _quick_start_commands() -> list[str]:
    section = README.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_the_quick_start_has_two_commands_and_ci_runs_the_second():
    install_and_profile, tests = _quick_start_commands()
    assert "pip install" in install_and_profile and "gradprobe profile examples/" in install_and_profile
    assert "gradprobe report" in install_and_profile
    script = re.search(r"gradprobe profile (\S+)", install_and_profile).group(1)
    assert (ROOT / script).is_file()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci[ci.index("# The README's test command:") + 1] == tests


def test_every_relative_link_and_picture_of_the_readme_and_docs_exists():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    checked = 0
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+://", target) or target.startswith("#"):
                continue
            path = target.split("#", 1)[0]
            assert (page.parent / path).exists(), f"{page.relative_to(ROOT)} links to missing {target}"
            checked += 1
    assert checked >= 20


def test_the_readme_claims_no_public_package():
    assert not re.search(r"pip install '?gradprobe[\[ ]", README)
    assert "pip wheel" in README
