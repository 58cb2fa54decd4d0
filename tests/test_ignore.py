"""`.ppignore` and Daemon.Exclude: PhotoPrism's own test cases, Go's filepath.Match table, and every producer."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from captiond.ignore import IgnoreRules, go_match
from captiond.library import scan
from conftest import FIXTURES, add_fixture, run_captiond, tree_hashes, write_config
from emulator import OllamaEmulator
from test_watch import SETTLE, Daemon, sidecar_caption, start_daemon, wait_for

__all__ = ["start_daemon"]  # the fixture, used by name

# Go's path/filepath match_test.go (matchTests); None: ErrBadPattern, which PhotoPrism treats as no match.
GO_MATCH_TABLE = [
    ("abc", "abc", True), ("*", "abc", True), ("*c", "abc", True), ("a*", "a", True), ("a*", "abc", True),
    ("a*", "ab/c", False), ("a*/b", "abc/b", True), ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True), ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False), ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True), ("a*b?c*x", "abxbbxdbxebxczzy", False),
    ("ab[c]", "abc", True), ("ab[b-d]", "abc", True), ("ab[e-g]", "abc", False), ("ab[^c]", "abc", False),
    ("ab[^b-d]", "abc", False), ("ab[^e-g]", "abc", True), ("a\\*b", "a*b", True), ("a\\*b", "ab", False),
    ("a?b", "a☺b", True), ("a[^a]b", "a☺b", True), ("a???b", "a☺b", False), ("a[^a][^a][^a]b", "a☺b", False),
    ("[a-ζ]*", "α", True), ("*[a-ζ]", "A", False), ("a?b", "a/b", False), ("a*b", "a/b", False),
    ("[\\]a]", "]", True), ("[\\-]", "-", True), ("[x\\-]", "x", True), ("[x\\-]", "-", True),
    ("[x\\-]", "z", False), ("[\\-x]", "x", True), ("[\\-x]", "-", True), ("[\\-x]", "a", False),
    ("[]a]", "]", None), ("[-]", "-", None), ("[x-]", "x", None), ("[x-]", "-", None), ("[x-]", "z", None),
    ("[-x]", "x", None), ("[-x]", "-", None), ("[-x]", "a", None), ("\\", "a", None), ("[a-b-c]", "a", None),
    ("[", "a", None), ("[^", "a", None), ("[^bc", "a", None), ("a[", "a", None), ("a[", "ab", None),
    ("a[", "x", None), ("a/b[", "x", None), ("*x", "xxx", True),
]


@pytest.mark.parametrize(("pattern", "name", "expected"), GO_MATCH_TABLE)
def test_patterns_match_as_go_filepath_match(pattern: str, name: str, expected: bool | None) -> None:
    assert go_match(pattern, name) is bool(expected)


# PhotoPrism's pkg/fs/testdata/directory (the .ppignore files verbatim) and what its tests expect ignored.
PHOTOPRISM_IGNORE_FILES = {
    ".ppignore": "subdirectory/animals/dog.*\n*.txt\ntest.md\n\n# This is a comment\nsomefile.*\nbaz*\n",
    "subdirectory/.ppignore": "bar\n",
    "subdirectory/animals/.ppignore": "gopher*\ntest files",
    "subdirectory/animals/private/.ppignore": "*\n",
}
PHOTOPRISM_FILES = {
    "bar.txt": True, "baz.xml": True, "example.bmp": False, "example.gif": False, "example.jpg": False,
    "subdirectory/.hiddendir/hidden.txt": True, "subdirectory/.hiddenfile": True,
    "subdirectory/animals/cat.json": False, "subdirectory/animals/dog.json": True,
    "subdirectory/animals/gopher.json": True, "subdirectory/animals/gopher.md": True,
    "subdirectory/animals/private/foo.json": True, "subdirectory/animals/test files/metadata.json": True,
    "subdirectory/bar/helloworld.md": True, "subdirectory/example.png": False, "subdirectory/example.tif": False,
    "subdirectory/example.txt": True, "subdirectory/foo.json": False, "subdirectory/foo.md": False,
    "subdirectory/foo.txt": True, "subdirectory/symlink/somefile.txt": True, "subdirectory/symlink/test.md": True,
    "subdirectory/symlink/test.xml": False, "subdirectory/symlink/test.yml": False,
    "subdirectory/symlink/TEST.MD": True, "@eaDir/thumb.jpg": True, "__MACOSX/photo.jpg": True,
}


def build_tree(root: Path, files: dict[str, str | bool]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else "x")


def test_photoprism_ignore_test_cases(tmp_path: Path) -> None:
    build_tree(tmp_path, {**PHOTOPRISM_IGNORE_FILES, **PHOTOPRISM_FILES})
    rules = IgnoreRules(tmp_path)
    assert {name: rules.ignored(tmp_path / name) for name in PHOTOPRISM_FILES} == PHOTOPRISM_FILES
    assert all(rules.ignored(tmp_path / name) for name in PHOTOPRISM_IGNORE_FILES)


def test_exclude_is_a_ppignore_in_the_originals_and_storage_folders_are_skipped(tmp_path: Path) -> None:
    build_tree(tmp_path, {"Private/a.jpg": True, "2024/private/b.jpg": True, "2024/c.jpg": True,
                          "2024/Trip/screenshot 1.png": True, "2024/Trip/d.jpg": True,
                          "storage/.ppstorage": True, "storage/e.jpg": True, "x/[brackets].jpg": True})
    rules = IgnoreRules(tmp_path, ("private", "/2024/Trip/screenshot*/", "x/[[]brackets].jpg"))
    ignored = {name for name in ("Private/a.jpg", "2024/private/b.jpg", "2024/c.jpg", "2024/Trip/screenshot 1.png",
                                 "2024/Trip/d.jpg", "storage/e.jpg", "x/[brackets].jpg")
               if rules.ignored(tmp_path / name)}
    assert ignored == {"Private/a.jpg", "2024/private/b.jpg", "2024/Trip/screenshot 1.png", "storage/e.jpg",
                       "x/[brackets].jpg"}


def ignored_library(originals: Path) -> tuple[list[Path], list[Path]]:
    """Photos to caption and photos every producer must leave alone (.ppignore, Exclude, hidden, storage)."""
    wanted = [add_fixture(originals, "Canon_PowerShot_S40.jpg", "2024/keep.jpg"),
              add_fixture(originals, "PNG_plain.png", "2024/Trip/keep.png")]
    left_alone = [add_fixture(originals, "Nikon_COOLPIX_P1.jpg", "2024/Trip/private-1.jpg"),
                  add_fixture(originals, "Konica_Minolta_DiMAGE_Z3.jpg", "Scans/raw scan.jpg"),
                  add_fixture(originals, "GIF.gif", "2024/drafts/a.gif"),
                  add_fixture(originals, "RIFF.webp", "@eaDir/thumb.webp")]
    (originals / "2024" / "Trip" / ".ppignore").write_text("private-*\n")
    (originals / ".ppignore").write_text("# folders PhotoPrism should not index\nScans\n")
    return wanted, left_alone


def exclude_config(tmp_path: Path, url: str) -> Path:
    return write_config(tmp_path, url, daemon={"Settle": SETTLE, "Exclude": ["2024/drafts"]})


def test_scan_skips_ignored_files(tmp_path: Path, originals: Path) -> None:
    wanted, _ = ignored_library(originals)
    assert sorted(scan(originals, rules=IgnoreRules(originals, ("2024/drafts",)))) == sorted(wanted)


@pytest.mark.subprocess
def test_run_never_reads_asks_about_or_writes_ignored_files(tmp_path: Path, originals: Path,
                                                           emulator: OllamaEmulator) -> None:
    wanted, left_alone = ignored_library(originals)
    before = tree_hashes(originals)
    result = run_captiond("run", "--config", exclude_config(tmp_path, emulator.url), "--originals", originals)
    assert result.exit_code == 0, result.stderr
    assert len(emulator.generation_requests()) == len(wanted)
    assert all(Path(f"{photo}.xmp").exists() for photo in wanted)
    assert {name: digest for name, digest in tree_hashes(originals).items() if not name.endswith(".xmp")} == before
    assert not [photo for photo in left_alone if Path(f"{photo}.xmp").exists()]


@pytest.mark.subprocess
def test_watch_leaves_ignored_files_alone_in_scans_events_and_queue(tmp_path: Path, originals: Path,
                                                                   emulator: OllamaEmulator,
                                                                   start_daemon: Callable[..., Daemon]) -> None:
    wanted, left_alone = ignored_library(originals)
    daemon = start_daemon(exclude_config(tmp_path, emulator.url), originals)
    assert wait_for(lambda: all(sidecar_caption(photo) for photo in wanted)), daemon.log()
    # A folder that becomes ignored after its photo was queued: the queued photo is left alone too
    # (touched afterwards, so that it settles only after the .ppignore exists).
    late = originals / "late"
    late.mkdir()
    shutil.copyfile(FIXTURES / "PNG_plain.png", late / "late.png")
    (late / ".ppignore").write_text("*.png\n")
    os.utime(late / "late.png")
    # New files: in an ignored folder, matching a pattern, in an excluded folder, and one to caption.
    arrivals = [originals / "Scans" / "new.jpg", originals / "2024" / "Trip" / "private-2.jpg",
                originals / "2024" / "drafts" / "b.jpg", originals / "2024" / "new.jpg"]
    for path in arrivals:
        shutil.copyfile(FIXTURES / "Canon_PowerShot_S40.jpg", path)
    assert wait_for(lambda: bool(sidecar_caption(arrivals[-1])), timeout=SETTLE + 20), daemon.log()
    assert daemon.stop() == 0
    assert len(emulator.generation_requests()) == len(wanted) + 1
    assert not [photo for photo in [*left_alone, *arrivals[:-1], late / "late.png"]
                if Path(f"{photo}.xmp").exists()]
