"""The project's documentation stands on its own: nothing points outside the repository,
every relative link in the markdown docs resolves, and every test the docs name exists."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Built from pieces so that this file does not match its own patterns.
FORBIDDEN = (
    ".." + "/shared",
    "/work" + "/shared",
    "IBNORM" + ".md",
    "ESTIMATORS" + ".md",
    "DESIGN" + ".md",
)

# [text](target) and ![alt](target); the target ends at whitespace or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def _tracked_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [p for p in out.stdout.decode("utf-8").split("\0") if p]


def _text(path: Path) -> str | None:
    """The file's text, or None for binary files and files deleted in the working tree."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


def _markdown_docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_no_tracked_file_points_outside_the_repository():
    offenders = []
    for rel in _tracked_files():
        text = _text(ROOT / rel)
        if text is None:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            for pattern in FORBIDDEN:
                if pattern in line:
                    offenders.append(f"{rel}:{lineno}: {pattern!r}")
    assert not offenders, "files that point at notes users do not have:\n" + "\n".join(offenders)


def test_relative_markdown_links_resolve_to_tracked_files():
    tracked = set(_tracked_files())
    tracked_dirs = {str(Path(p).parent) for p in tracked}
    broken, seen = [], 0
    for doc in _markdown_docs():
        text = doc.read_text(encoding="utf-8")
        for target in LINK.findall(text):
            if EXTERNAL.match(target) or target.startswith("#"):
                continue
            seen += 1
            path = target.split("#", 1)[0]
            resolved = (doc.parent / path).resolve()
            try:
                rel = resolved.relative_to(ROOT).as_posix()
            except ValueError:
                broken.append(f"{doc.relative_to(ROOT)}: {target} (outside the repository)")
                continue
            if rel not in tracked and rel not in tracked_dirs:
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no tracked file {rel})")
    assert seen > 0  # the docs do link to each other and to figures
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_link_pattern_reads_targets_and_skips_external_ones():
    text = 'see [a](docs/a.md), ![fig](figures/f.png "title") and [web](https://x.org/y)'
    targets = LINK.findall(text)
    assert targets == ["docs/a.md", "figures/f.png", "https://x.org/y"]
    assert [t for t in targets if not EXTERNAL.match(t)] == ["docs/a.md", "figures/f.png"]


def test_tests_named_in_the_docs_exist():
    defined = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        defined.update(re.findall(r"^\s*def (test_\w+)", path.read_text(encoding="utf-8"), re.M))
    named = {}
    for doc in _markdown_docs():
        for name in re.findall(r"`(test_\w+)`", doc.read_text(encoding="utf-8")):
            named.setdefault(name, doc.relative_to(ROOT).as_posix())
    assert len(named) > 20  # docs/ibnorm.md and docs/estimators.md cite the tests they rely on
    missing = sorted(f"{doc}: {name}" for name, doc in named.items() if name not in defined)
    assert not missing, "tests the docs name but the suite lacks:\n" + "\n".join(missing)
