"""The README is for users and the docs document the project: short, no diary, and no number the reports do not hold."""

import re
import subprocess
import sys

from .conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# words of a work log, not of documentation: who worked when, on which anonymous machine, under which ticket
DIARY = re.compile(r"\bsessions?\b|\bmachine [A-Z]\b|\bthis machine\b|\bissues? #?\d+|(?<![\w/])#\d+\b|\bwave \d",
                   re.IGNORECASE)


def test_the_readme_is_at_most_300_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


def test_readme_and_docs_are_documentation_not_a_diary():
    found = [f"{f.relative_to(ROOT)}:{n}: {m.group(0)!r}" for f in DOCS
             for n, line in enumerate(f.read_text().splitlines(), 1) for m in DIARY.finditer(line)]
    assert not found, "\n".join(found)


# files a user of the project does not have: the notes of the people who built it
OUTSIDE = re.compile(r"STACK-NOTES|DESIGN\.md|\.\./shared\b|\bshared/(docs|data|seed)\b")


def test_readme_and_docs_name_no_file_outside_the_project():
    found = [f"{f.relative_to(ROOT)}:{n}: {m.group(0)!r}" for f in DOCS
             for n, line in enumerate(f.read_text().splitlines(), 1) for m in OUTSIDE.finditer(line)]
    assert not found, "state the fact instead:\n" + "\n".join(found)
    assert OUTSIDE.search("about 20x slower (STACK-NOTES)") and OUTSIDE.search("see ../shared/data/README.md")


def test_the_diary_check_catches_diary_words():
    for line in ("measured in session 12", "on machine B", "as issue 14 asks", "see #29", "on this machine"):
        assert DIARY.search(line), line
    for line in ("a `sessionmaker`", "the MLflow UI on 127.0.0.1:5000", "CPU capability AVX2", "docs/a.md#errors"):
        assert not DIARY.search(line), line


def test_the_readme_results_table_is_what_the_reports_say():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "results_table.py"), "--check"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    readme = (ROOT / "README.md").read_text()
    assert "| tinybert |" in readme.split("results:start")[1].split("results:end")[0]


def test_the_results_check_fails_on_a_number_the_reports_do_not_hold(tmp_path):
    readme = (ROOT / "README.md").read_text()
    table = readme.split("results:start")[1].split("results:end")[0]
    first = re.search(r"\| tinybert \| (\d\.\d{4})", table).group(1)
    wrong = tmp_path / "README.md"
    wrong.write_text(readme.replace(f"| tinybert | {first}", "| tinybert | 0.9999", 1))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "results_table.py"), "--check", "--readme",
                           str(wrong)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1 and "differs" in proc.stderr


def test_the_results_table_takes_the_seeds_study_only_of_the_same_pipeline_run(tmp_path):
    import json
    import shutil

    reports = tmp_path / "reports"
    shutil.copytree(ROOT / "reports", reports, ignore=shutil.ignore_patterns("*.png", "losses"))
    seeds = json.loads((reports / "seeds.json").read_text())
    summary = json.loads((reports / "summary.json").read_text())
    own = next(c for c in seeds["cells"] if c["shared_with_pipeline"])
    assert {n: m["score"] for n, m in own["models"].items()} == {
        n: summary["models"][n]["score"] for n in own["models"]}  # the committed study read the committed run
    (tmp_path / "README.md").write_text((ROOT / "README.md").read_text())
    m = seeds["models"]["tinybert"]
    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| tinybert |"))
    assert f"{m['score']['mean']:.4f} ± {m['score']['std']:.4f}" in row
    own["models"]["tinybert"]["score"] += 0.01  # a study of another run
    (reports / "seeds.json").write_text(json.dumps(seeds))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "results_table.py"), "--check", "--readme",
                           str(tmp_path / "README.md"), "--reports", str(reports)], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode != 0 and "computed from another pipeline run than summary.json (tinybert)" in proc.stderr


def test_the_docs_the_readme_links_exist():
    for link in re.findall(r"\]\((docs/[^)#]+)", (ROOT / "README.md").read_text()):
        assert (ROOT / link).is_file(), link
