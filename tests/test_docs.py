"""The README stays a page for users: short, its links alive, its results table the rendered one."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for document in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)\)", document.read_text()):
            if not target.startswith("http"):
                assert (document.parent / target).exists(), f"{document.name} links to missing {target}"


def test_readme_results_are_rendered_from_the_newest_published_run():
    """benchmarks/results.py --readme wrote the table; a hand edit or a newer run makes this fail."""
    script = ROOT / "benchmarks" / "results.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, "README's results differ from `benchmarks/results.py --readme`" + result.stderr
