"""The documentation: the site builds without a broken link, the README stays a first page, and
the machinery that keeps command outputs real (scripts/docs_outputs.py) parses what it must.
Running the tutorial itself is tests/e2e/test_tutorial.py."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("docs_outputs", ROOT / "scripts" / "docs_outputs.py")
assert spec and spec.loader
docs_outputs = importlib.util.module_from_spec(spec)
sys.modules["docs_outputs"] = docs_outputs
spec.loader.exec_module(docs_outputs)


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict`: a link to a missing page or anchor, or a page missing from the nav, fails."""
    for module in ("mkdocs", "material"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (setup.sh installs it with the test extra: pip install -e '.[test]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    home = (tmp_path / "site" / "index.html").read_text()
    assert "Walk-through" in home and 'href="user-guide/' in home  # the README, its links made site-relative


def test_the_readme_is_a_first_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 265  # "at most ~250": the outputs are real, their length is not ours
    for section in ("## Set up, test, run", "## Walk-through", "## Where to read on"):
        assert section in readme
    assert "maestro.py task" not in readme  # one spelling in examples: the installed command
    # the README's two commands are exactly what CI runs
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd ", "source .ci/"))]
    first_block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in first_block.splitlines()] == ci


def _table_line(line: str) -> bool:
    """A row of a table (columns aligned by runs of spaces, or drawn) rather than a sentence:
    a terminal wraps a long sentence readably, a long row it turns into a mess."""
    return bool(re.search(r"[│┃━─█░▒]", line)) or len(re.findall(r"\S {2,}(?=\S)", line.strip())) >= 2


def test_every_output_shown_in_the_pages_is_there_and_its_tables_fit_80_columns() -> None:
    outputs = 0
    for page in docs_outputs.PAGES:
        for block in docs_outputs.blocks(page, (ROOT / page).read_text()):
            if block.kind == "run":
                continue
            outputs += 1
            lines = block.body.splitlines()[1:-1]
            assert lines and lines[0].startswith("$ "), f"{page}: `{block.cmd}` shows nothing: run scripts/docs_outputs.py"
            too_wide = [line for line in lines if len(line) > docs_outputs.COLUMNS and _table_line(line)]
            assert not too_wide, f"{page}: `{block.cmd}` prints table rows over 80 columns: {too_wide[:3]}"
            assert not any(len(line) > docs_outputs.COLUMNS for line in lines if line.startswith("$ "))
    assert outputs >= 10


def test_a_table_row_is_told_from_a_sentence() -> None:
    assert _table_line(" 1  user.alice.tutorial        0          4       0  completed")
    assert _table_line("│ 1 │ x │")
    assert not _table_line("warning: the scheduler stopped at 2026-12-01 07:30:49 (3s ago); nothing starts")
    assert not _table_line("  command                  python3 /home/alice/orchestra/examples/tutorial/job.py")


def test_markers_are_found_empty_or_filled_and_a_new_output_replaces_the_old() -> None:
    page = ("text\n<!-- run -->\n```bash\ncd x\n```\n\n<!-- output: maestro task list -->\n```text\n```\n"
            "<!-- /output -->\nmore\n<!-- output-loose: orchestra scheduler run --until-idle -->\n```text\n$ old\n"
            "line\n```\n<!-- /output -->\nend\n")
    found = docs_outputs.blocks("p.md", page)
    assert [(b.kind, b.cmd) for b in found] == [
        ("run", None), ("output", "maestro task list"), ("output-loose", "orchestra scheduler run --until-idle")]
    assert page[found[2].start:found[2].end].endswith("<!-- /output -->\n")
    assert docs_outputs.fenced("$ maestro task list\na") == "```text\n$ maestro task list\na\n```\n"


def test_a_long_command_is_folded_before_an_option_to_fit_80_columns() -> None:
    cmd = ('maestro task create -t user.$USER.tutorial -c user.$USER.tutorial_configs -d user.$USER.tutorial_data '
           '--containerImage python:3.11 --exec "python3 $PWD/job.py -d %DATA -c %IN -o %OUT"')
    shown = docs_outputs.prompt(cmd)
    assert all(len(line) <= 80 for line in shown.splitlines())
    assert shown.splitlines()[-1] == '    --exec "python3 $PWD/job.py -d %DATA -c %IN -o %OUT"'  # quotes kept whole
    assert re.sub(r" \\\n +", " ", shown) == "$ " + cmd


def test_the_comparison_ignores_digits_and_spacing_but_not_words() -> None:
    normal = docs_outputs.normal
    assert normal("│ 12 │ 2026-12-01 07:12:22 │ 0.4 s │") == normal("│  3 │ 2026-12-02 17:02:02 │ 10.1 s │")
    assert normal("status completed") != normal("status partial")


def test_the_benchmark_script_writes_into_the_benchmarks_page() -> None:
    bench = (ROOT / "scripts" / "bench.py").read_text()
    assert 'ROOT / "docs" / "benchmarks.md"' in bench
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert page.index("<!-- bench:start -->") < page.index("<!-- bench:end -->")
    assert re.search(r"Measured \d{4}-\d\d-\d\d on .+, \d+ cores", page)  # every table says when and where
