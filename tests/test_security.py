"""No code path evaluates, unpickles or shells out user data (a grep over the project's code).

Also: nothing cites the design notes or the team's data folder outside the repository
(cite ``docs/architecture.md``); only tests may build the path to the real test data.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("pipeline", "workers", "cluster", "benchmarks")
                 for p in (ROOT / d).rglob("*.py"))
FORBIDDEN = {
    r"(?<![\w.])eval\(": "eval() of a string",
    r"(?<![\w.])exec\(": "exec() of a string",
    r"\bpickle\.loads?\(": "unpickling",
    r"\bmarshal\.loads?\(": "unmarshalling",
    r"shell\s*=\s*True": "a shell command line",
    r"\bos\.system\(|\bos\.popen\(": "a shell command line",
    r"\byaml\.(unsafe_)?load\(": "YAML read without safe_load",
    r"weights_only\s*=\s*False": "unsafe torch.load",
}


def test_there_is_code_to_check() -> None:
    assert len(SOURCES) > 20


@pytest.mark.parametrize("pattern", list(FORBIDDEN))
def test_no_forbidden_calls(pattern: str) -> None:
    hits = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
            for p in SOURCES for n, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(pattern, line) and not line.lstrip().startswith("#")]
    assert not hits, f"{FORBIDDEN[pattern]}:\n" + "\n".join(hits)


def test_every_torch_load_is_weights_only() -> None:
    calls = [(p, line) for p in SOURCES for line in p.read_text().splitlines()
             if "torch.load(" in line and not line.lstrip().startswith(("#", '"', "'"))]
    assert calls, "expected the checkpoint loader to call torch.load"
    for path, line in calls:
        assert "weights_only=True" in line, f"{path.relative_to(ROOT)}: {line.strip()}"


# --------------------------------------------------------------------------- citations

#: Text that names the design notes or the data folder beside the repository.  Built from
#: pieces so this file does not cite them itself.
DESIGN_NOTES = re.compile(re.escape("DESIGN" + ".md"), re.IGNORECASE)
SHARED_DIR = re.compile(re.escape(".." + "/") + "shared" + r"\b")
#: A string literal that is nothing but a path into that folder (``"shared"``, ``"shared/data"``).
SHARED_PATH_LITERAL = re.compile(r"(\.\./)*" + "shared" + r"(/[\w.-]*)*")
CITED_DIRS = ("pipeline", "workers", "cluster", "benchmarks", "tests", "notebooks", "docs")
TEXT_SUFFIXES = {".py", ".md", ".ipynb", ".yaml", ".yml", ".toml", ".sh", ".in", ".txt", ".cfg"}


def _cited_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for d in CITED_DIRS:
        files += [p for p in (ROOT / d).rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES
                  and "__pycache__" not in p.parts]
    return sorted(files)


def _python_hits(text: str, *, test_code: bool) -> list[tuple[int, str]]:
    """``(line, why)`` of every citation in Python source ``text``.

    Comments and strings that cite the design notes or the data folder are prose; a
    test may build the path to the real data from string literals that are nothing
    but a path (``ROOT.parent / "shared" / "data"``), other code may not.
    """
    hits = []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.STRING):
            continue

        def line(match: re.Match) -> int:
            return tok.start[0] + tok.string[:match.start()].count("\n")

        value = tok.string
        if tok.type == tokenize.STRING:
            try:
                value = ast.literal_eval(tok.string)
            except (ValueError, SyntaxError):  # an f-string: judge its text
                pass
        if (m := DESIGN_NOTES.search(tok.string)):
            hits.append((line(m), "cites the design notes"))
        elif isinstance(value, str) and SHARED_PATH_LITERAL.fullmatch(value):
            if not test_code:
                hits.append((tok.start[0], "code outside tests/ builds a path to the data folder"))
        elif (m := SHARED_DIR.search(tok.string)):
            hits.append((line(m), "cites the data folder in prose"))
    return hits


def _citations(path: Path, text: str) -> list[str]:
    rel = path.relative_to(ROOT)
    if path.suffix == ".py":
        found = _python_hits(text, test_code=rel.parts[0] == "tests")
    else:
        found = [(n, "cites the design notes" if DESIGN_NOTES.search(line)
                  else "cites the data folder")
                 for n, line in enumerate(text.splitlines(), 1)
                 if DESIGN_NOTES.search(line) or SHARED_DIR.search(line)]
    return [f"{rel}:{n}: {why}" for n, why in found]


def test_the_citation_check_sees_what_it_should() -> None:
    design, shared = "DESIGN" + ".md", ".." + "/shared"
    tests_file, code_file, doc = ROOT / "tests" / "x.py", ROOT / "pipeline" / "x.py", ROOT / "x.md"
    prose = f'"""The real data in {shared}/data."""\n'
    builds = 'DATA = ROOT.parent / "shared" / "data"\nOTHER = Path("' + shared + '/data")\n'
    assert _citations(tests_file, prose) == ["tests/x.py:1: cites the data folder in prose"]
    assert _citations(tests_file, f"x = 1  # see {design}\n") == \
        ["tests/x.py:1: cites the design notes"]
    assert _citations(tests_file, builds) == []
    assert len(_citations(code_file, builds)) == 2
    assert _citations(code_file, 'msg = f"read {name} from ' + shared + '/data"\n') == \
        ["pipeline/x.py:1: cites the data folder in prose"]
    assert _citations(doc, f"See {design}.\n\nor {shared}/data\n") == \
        ["x.md:1: cites the design notes", "x.md:3: cites the data folder"]
    multi = '"""One.\n\nTwo, see ' + design + '."""\n'
    assert _citations(code_file, multi) == ["pipeline/x.py:3: cites the design notes"]
    assert _citations(code_file, '"""Shared memory: a shared lock."""\n') == []


def test_nothing_cites_the_design_notes_or_the_shared_folder() -> None:
    files = _cited_files()
    assert len(files) > 100 and ROOT / "tests" / "conftest.py" in files
    hits = [h for p in files for h in _citations(p, p.read_text(errors="replace"))]
    assert not hits, ("cite docs/architecture.md instead (tests may only build the path to the "
                      "real data):\n" + "\n".join(hits))
