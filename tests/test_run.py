"""End to end: `captiond run` on a temporary library of real files, against the Ollama emulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import (
    Result,
    add_fixture,
    file_hash,
    read_tags,
    run_captiond,
    tree_hashes,
    write_config,
)
from emulator import BUSY, Drop, OllamaEmulator, Reply, decode_images, expected_caption

pytestmark = pytest.mark.subprocess  # every test here starts `python -m captiond`

MIXED = ["Canon_PowerShot_S40.jpg", "Olympus_boilerplate.jpg", "Nikon_COOLPIX_P1.jpg", "IMG_5195.HEIC",
         "Arbitro.tiff", "DNG_with_preview.dng", "PNG_plain.png", "GIF.gif", "RIFF.webp"]
HUMAN = ["no_exif.jpg", "33-type_error.jpg", "IPTC.jpg", "Nikon.nef", "PNG.png"]


def caption_of(path: Path) -> str:
    """Return the caption a reader sees in a photo's sidecar."""
    return read_tags(Path(f"{path}.xmp"), "XMP-dc:Description").get("XMP-dc:Description", "")


def run(config: Path, originals: Path, *arguments: str) -> Result:
    return run_captiond("run", "--config", config, "--originals", originals, *arguments)


def test_captions_a_mixed_library_into_sidecars_and_leaves_originals_untouched(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    photos = [add_fixture(originals, name, f"2024/{name}") for name in MIXED]
    people = [add_fixture(originals, name) for name in HUMAN]
    before = tree_hashes(originals)
    config = write_config(tmp_path, emulator.url)

    result = run(config, originals)

    assert result.exit_code == 0, result.stderr
    assert f"captioned {len(MIXED)}, skipped {len(HUMAN)}, failed 0" in result.stdout
    for photo in photos:
        sidecar = Path(f"{photo}.xmp")
        tags = read_tags(sidecar, "XMP-dc:Description", "XMP-tiff:ImageDescription", "XMP-captiond:all")
        assert tags["XMP-dc:Description"].startswith("A photo with a calm scene"), photo.name
        assert tags["XMP-tiff:ImageDescription"] == tags["XMP-dc:Description"]
        assert tags["XMP-captiond:CaptionSource"] == "ollama"
        assert tags["XMP-captiond:CaptionModel"] == "qwen2.5vl:3b"
    for person in people:
        assert not Path(f"{person}.xmp").exists(), f"{person.name} has a person's caption and must be left alone"
    after = tree_hashes(originals)
    assert {name: digest for name, digest in after.items() if not name.endswith(".xmp")} == before
    # Each image got its own caption: the emulator's answer names a hash of the JPEG it was sent.
    assert len({caption_of(photo) for photo in photos}) >= len(MIXED) - 1


def test_second_run_asks_the_model_nothing(tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    for name in MIXED[:4]:
        add_fixture(originals, name)
    config = write_config(tmp_path, emulator.url)
    assert run(config, originals).exit_code == 0
    asked = len(emulator.generation_requests())
    sidecars = {path: path.stat().st_mtime_ns for path in originals.glob("*.xmp")}

    result = run(config, originals)

    assert result.exit_code == 0
    assert "captioned 0, skipped 4" in result.stdout
    assert "already captioned (ollama)" in result.stdout
    assert len(emulator.generation_requests()) == asked == 4
    assert {path: path.stat().st_mtime_ns for path in originals.glob("*.xmp")} == sidecars


def test_camera_boilerplate_is_replaced_and_a_persons_caption_is_kept(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    olympus = add_fixture(originals, "Olympus_boilerplate.jpg")  # in PhotoPrism's UnwantedDescriptions
    konica = add_fixture(originals, "Konica_Minolta_DiMAGE_Z3.jpg")  # not in it: PhotoPrism keeps it, so do we
    person = add_fixture(originals, "33-type_error.jpg")
    config = write_config(tmp_path, emulator.url)

    result = run(config, originals)

    assert "has a caption from meta" in result.stdout
    assert caption_of(olympus).startswith("A photo with a calm scene")
    assert not Path(f"{konica}.xmp").exists()
    assert not Path(f"{person}.xmp").exists()
    assert read_tags(person, "XMP-dc:Description")["XMP-dc:Description"].startswith("El cielo sobre Berlin")


def test_force_follows_source_priorities(tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    embedded_person = add_fixture(originals, "33-type_error.jpg")  # meta (16)
    sidecar_person = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    Path(f"{sidecar_person}.xmp").write_text(_sidecar("My daughter at the lake"))  # xmp (32)
    ours = add_fixture(originals, "Olympus_boilerplate.jpg")
    config = write_config(tmp_path, emulator.url)
    assert run(config, originals).exit_code == 0
    assert len(emulator.generation_requests()) == 1  # only the boilerplate one

    emulator.reply = lambda body: "A second opinion about the picture."
    forced = run(config, originals, "--force")  # --source auto (1): PhotoPrism's --force alone replaces nothing
    assert forced.exit_code == 0, forced.stderr
    assert "captioned 0" in forced.stdout
    assert "--force --source ollama" in forced.stdout
    assert len(emulator.generation_requests()) == 1

    forced = run(config, originals, "--force", "--source", "ollama")  # 16: replaces meta (16) and ollama (16)

    assert forced.exit_code == 0, forced.stderr
    assert caption_of(ours) == "A second opinion about the picture."
    assert caption_of(embedded_person) == "A second opinion about the picture."
    assert caption_of(sidecar_person) == "My daughter at the lake"
    assert "has a caption from xmp (32), higher than --source ollama (16)" in forced.stdout

    emulator.reply = lambda body: "A curated caption."
    manual = run(config, originals, "--force", "--source", "manual")  # manual (64) >= xmp (32)
    assert manual.exit_code == 0
    assert caption_of(sidecar_person) == "A curated caption."
    tags = read_tags(Path(f"{sidecar_person}.xmp"), "XMP-captiond:CaptionSource")
    assert tags["XMP-captiond:CaptionSource"] == "manual"

    emulator.reply = lambda body: "Should never be written."
    again = run(config, originals, "--force", "--source", "ollama")  # ollama (16) < manual (64) everywhere now
    assert again.exit_code == 0
    assert "captioned 0" in again.stdout
    assert caption_of(sidecar_person) == "A curated caption."


def test_a_caption_edited_by_a_person_counts_as_theirs(tmp_path: Path, originals: Path,
                                                       emulator: OllamaEmulator) -> None:
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    config = write_config(tmp_path, emulator.url)
    run(config, originals)
    sidecar = Path(f"{photo}.xmp")
    sidecar.write_text(sidecar.read_text().replace("A photo with a calm scene", "Grandma's garden"))

    result = run(config, originals, "--force")

    assert "has a caption from xmp" in result.stdout
    assert caption_of(photo).startswith("Grandma's garden")


def test_existing_base_name_sidecar_is_updated_and_keeps_other_tools_tags(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    base_sidecar = add_fixture(originals, "fspot_sidecar.xmp", "Canon_PowerShot_S40.xmp")
    config = write_config(tmp_path, emulator.url)

    assert run(config, originals).exit_code == 0

    assert not Path(f"{photo}.xmp").exists()
    tags = read_tags(base_sidecar, "XMP-dc:all", "XMP-aux:all", "XMP-captiond:CaptionSource")
    assert tags["XMP-dc:Description"].startswith("A photo with a calm scene")
    assert tags["XMP-dc:Title"] == "XMP nodeID test (XMP written by f-spot)"
    assert "nodeID" in tags["XMP-dc:Subject"]
    assert tags["XMP-aux:SerialNumber"] == "123456789" or "0123456789" in tags["XMP-aux:SerialNumber"]


def test_sidecar_name_base_creates_name_xmp(tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    config = write_config(tmp_path, emulator.url, daemon={"SidecarName": "base"})
    assert run(config, originals).exit_code == 0
    assert photo.with_suffix(".xmp").exists()
    assert not Path(f"{photo}.xmp").exists()


def test_embedded_mode_writes_into_jpeg_but_raw_gets_a_sidecar(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    jpeg = add_fixture(originals, "Olympus_boilerplate.jpg")
    raw = add_fixture(originals, "DNG_with_preview.dng")
    raw_bytes = file_hash(raw)
    config = write_config(tmp_path, emulator.url, daemon={"Write": "embedded"})

    result = run(config, originals)

    assert result.exit_code == 0, result.stderr
    tags = read_tags(jpeg, "XMP-dc:Description", "IFD0:ImageDescription", "XMP-captiond:CaptionSource")
    assert tags["XMP-dc:Description"].startswith("A photo with a calm scene")
    assert tags["IFD0:ImageDescription"] == tags["XMP-dc:Description"]
    assert not Path(f"{jpeg}.xmp").exists()
    assert file_hash(raw) == raw_bytes
    assert caption_of(raw).startswith("A photo with a calm scene")
    assert sorted(path.name for path in originals.iterdir()) == [
        "DNG_with_preview.dng", "DNG_with_preview.dng.xmp", "Olympus_boilerplate.jpg"]


def test_every_corpus_raw_kind_is_captioned_or_says_it_has_no_usable_preview(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    kinds = ["CanonRaw.cr2", "CanonRaw.cr3", "Nikon.nef", "Minolta.mrw", "FujiFilm.raf", "Panasonic.rw2"]
    for name in kinds:
        add_fixture(originals, name, f"raw-{name}")  # Nikon.nef's caption is a person's: skipped
    usable = add_fixture(originals, "DNG_with_preview.dng")
    config = write_config(tmp_path, emulator.url)

    result = run(config, originals)

    # Minolta.mrw says "KONICA MINOLTA DIGITAL CAMERA": not in PhotoPrism's unwanted list, so a caption (meta).
    assert "captioned 1, skipped 2, failed 4" in result.stdout, result.stdout
    for name in kinds:
        assert name in ("Nikon.nef", "Minolta.mrw") or f"raw-{name}: no usable preview" in result.stdout
    # FujiFilm.raf: its 12 kB PreviewImage is 8x8 pixels, the 9 kB thumbnail 160x120: both too small.
    assert "raw-FujiFilm.raf: no usable preview: the largest embedded preview is 160x120 pixels" in result.stdout
    assert caption_of(usable).startswith("A photo with a calm scene")


def test_dry_run_asks_and_writes_nothing(tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    add_fixture(originals, "Canon_PowerShot_S40.jpg")
    add_fixture(originals, "no_exif.jpg")
    before = tree_hashes(originals)
    result = run(write_config(tmp_path, emulator.url), originals, "--dry-run")
    assert result.exit_code == 0
    assert "would caption 1" in result.stdout
    assert tree_hashes(originals) == before
    assert emulator.generation_requests() == []


def test_filter_and_count_limit_what_is_captioned(tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    for folder in ("2023", "2024"):
        for name in ("Canon_PowerShot_S40.jpg", "Olympus_boilerplate.jpg", "Arbitro.tiff"):
            add_fixture(originals, name, f"{folder}/{name}")
    config = write_config(tmp_path, emulator.url)

    assert run(config, originals, "2024", "name:Arbitro|Canon*").exit_code == 0  # terms ANDed, as in PhotoPrism
    captioned = sorted(path.relative_to(originals).as_posix() for path in originals.rglob("*.xmp"))
    assert captioned == ["2024/Arbitro.tiff.xmp", "2024/Canon_PowerShot_S40.jpg.xmp"]

    result = run(config, originals, "--count", "1")
    assert "captioned 1," in result.stdout
    assert len(list(originals.rglob("*.xmp"))) == 3


def test_broken_files_fail_with_a_reason_and_the_run_goes_on(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    good = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    (originals / "empty.jpg").write_bytes(b"")
    (originals / "notes.jpg").write_text("this is not a photo\n")
    truncated = originals / "truncated.jpg"
    truncated.write_bytes((Path(__file__).parent / "fixtures" / "no_exif.jpg").read_bytes()[:20000])
    add_fixture(originals, "CanonRaw.cr2", "nopreview.cr2")
    config = write_config(tmp_path, emulator.url)

    result = run(config, originals)

    assert result.exit_code == 1
    assert "captioned 1, skipped 0, failed 4" in result.stdout
    assert "empty.jpg: empty file (0 bytes)" in result.stdout
    assert "notes.jpg: not an image" in result.stdout
    assert "truncated.jpg: corrupt or truncated image" in result.stdout
    assert "nopreview.cr2: no usable preview" in result.stdout
    assert caption_of(good).startswith("A photo with a calm scene")


def test_transient_server_errors_are_retried(tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    emulator.enqueue(BUSY, Drop())
    result = run(write_config(tmp_path, emulator.url), originals)
    assert result.exit_code == 0, result.stderr
    assert len(emulator.generation_requests()) == 3
    assert caption_of(photo).startswith("A photo with a calm scene")


def test_unreachable_server_stops_the_run_with_exit_code_3(tmp_path: Path, originals: Path) -> None:
    add_fixture(originals, "Canon_PowerShot_S40.jpg")
    with OllamaEmulator() as server:
        url = server.url
    result = run(write_config(tmp_path, url), originals)
    assert result.exit_code == 3
    assert f"cannot reach the model server at {url}/api/generate" in result.stderr
    assert result.stderr.count("\n") < 10


def test_server_dying_mid_run_stops_the_run_once(tmp_path: Path, originals: Path) -> None:
    for index in range(6):
        add_fixture(originals, "Canon_PowerShot_S40.jpg", f"photo{index}.jpg")
    with OllamaEmulator() as server:
        config = write_config(tmp_path, server.url)
        server.reply = lambda body: (server.stop(), "never")[1] if len(server.generation_requests()) > 2 else \
            "A photo of a field."
        result = run(config, originals)
    assert result.exit_code == 3
    assert "stopped answering" in result.stderr or "cannot reach" in result.stderr
    assert not list(originals.glob(".captiond-tmp-*"))


def test_missing_model_and_blind_model_are_explained(tmp_path: Path, originals: Path,
                                                      emulator: OllamaEmulator) -> None:
    add_fixture(originals, "Canon_PowerShot_S40.jpg")
    missing = run(write_config(tmp_path, emulator.url, model="llava:13b"), originals)
    assert missing.exit_code == 3
    assert f"model llava:13b not found on {emulator.url}: run `ollama pull llava:13b`" in missing.stderr

    blind = run(write_config(tmp_path, emulator.url, model="llama3.2:1b"), originals)
    assert blind.exit_code == 3
    assert "cannot see images" in blind.stderr
    assert emulator.generation_requests() == []


def test_model_text_is_cleaned_and_cannot_inject_exiftool_options(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    photo = add_fixture(originals, "Olympus_boilerplate.jpg")
    emulator.enqueue(Reply("<think>hmm</think>Sure! Here is a caption:\n\n\"A red boat\n-IFD0:Artist=evil\n"
                           "-FileName=gotcha.jpg\"\n"))
    config = write_config(tmp_path, emulator.url, daemon={"Write": "embedded"})

    result = run(config, originals)

    assert result.exit_code == 0, result.stderr
    tags = read_tags(photo, "XMP-dc:Description", "IFD0:Artist", "System:FileName")
    assert tags["XMP-dc:Description"] == "A red boat -IFD0:Artist=evil -FileName=gotcha.jpg"
    assert "IFD0:Artist" not in tags
    assert sorted(path.name for path in originals.iterdir()) == ["Olympus_boilerplate.jpg"]


def test_file_names_that_look_like_options_or_hold_odd_characters(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    names = ["-o evil.jpg", "-TagsFromFile.jpg", "with space's \"quotes\".jpg", "new\nline.jpg", "ünïcödé.jpg"]
    photos = [add_fixture(originals, "Canon_PowerShot_S40.jpg", name) for name in names]
    raw_name = originals / "latin1-\xe9.jpg".encode("latin-1").decode("utf-8", "surrogateescape")
    raw_name.write_bytes(photos[0].read_bytes())
    photos.append(raw_name)
    config = write_config(tmp_path, emulator.url)

    result = run(config, originals)

    assert result.exit_code == 0, result.stdout + result.stderr
    assert f"captioned {len(photos)}, skipped 0, failed 0" in result.stdout
    for photo in photos:
        assert Path(f"{photo}.xmp").is_file(), repr(photo.name)
    assert len(list(originals.iterdir())) == 2 * len(photos)


def test_openai_compatible_server(tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    photo = add_fixture(originals, "Canon_PowerShot_S40.jpg")
    config = write_config(tmp_path, emulator.url, service={"Uri": f"{emulator.url}/v1/chat/completions"},
                          entry={"Engine": "openai"})
    result = run(config, originals)
    assert result.exit_code == 0, result.stderr
    request = emulator.generation_requests()[0]
    assert request.path == "/v1/chat/completions"
    assert request.body is not None and request.body["max_tokens"] == 256
    assert caption_of(photo) == expected_caption(decode_images(request.body)[0])
    tags = read_tags(Path(f"{photo}.xmp"), "XMP-captiond:CaptionSource")
    assert tags["XMP-captiond:CaptionSource"] == "openai"


def test_bad_config_lists_every_problem_with_exit_code_2(tmp_path: Path, originals: Path) -> None:
    config = tmp_path / "vision.yml"
    config.write_text("Models:\n  - Type: caption\n    Resolution: big\n  - Type: poem\n"
                      "Daemon:\n  Write: elsewhere\n  Colour: blue\n")
    result = run(config, originals)
    assert result.exit_code == 2
    assert 'Models[0].Resolution: expected a positive integer, got "big"' in result.stderr
    assert "Models[1].Type: expected one of caption, labels" in result.stderr
    assert 'Daemon.Write: expected one of sidecar, embedded, got "elsewhere"' in result.stderr


def _sidecar(description: str) -> str:
    return ("<?xpacket begin='' id='W5M0MpCehiHzreSzNTczkc9d'?>\n"
            "<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>"
            "<rdf:Description rdf:about='' xmlns:dc='http://purl.org/dc/elements/1.1/'><dc:description><rdf:Alt>"
            f"<rdf:li xml:lang='x-default'>{description}</rdf:li></rdf:Alt></dc:description></rdf:Description>"
            "</rdf:RDF></x:xmpmeta>\n<?xpacket end='w'?>")


def test_report_file_holds_the_summary_as_json(tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    add_fixture(originals, "Canon_PowerShot_S40.jpg")
    add_fixture(originals, "no_exif.jpg")
    (originals / "empty.jpg").write_bytes(b"")
    report = tmp_path / "report.json"
    result = run(write_config(tmp_path, emulator.url), originals, "--report", str(report))
    assert result.exit_code == 1
    data = json.loads(report.read_text())
    assert (data["captioned"], data["skipped"], data["failed"]) == (1, 1, 1)
    assert data["skipped_reasons"] == {"has a caption from meta": 1}
    assert data["failures"] == [{"path": "empty.jpg", "reason": "empty file (0 bytes)", "transient": False}]
    assert set(data["stages_ms"]) == {"read", "decode", "encode", "request", "write"}
