"""The download stage against a real HTTP server on 127.0.0.1 (tests/http_fixture.py).

Archives are built here from real MIDI files (the ones inside the music21 wheel); the crawled sites are
small fixture sites shaped like piano-midi.de, thefinalfantasy.net and freemidi.org.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path

import music21
import pytest
import yaml
from conftest import HANG_GUARD_S
from http_fixture import FixtureServer, Route

from pipeline.cli import main as dmc
from pipeline.data.datasets import classical, final_fantasy, freemidi, lakh, maestro, midi_files
from pipeline.data.download import (
    COMPLETE,
    CRAWL_LOG,
    Client,
    Settings,
    extract_archive,
    local_path,
    page_links,
)
from pipeline.data.download.archives import Limits
from pipeline.errors import DmcError
from pipeline.params import load_params, validate

REPO = Path(__file__).resolve().parents[1]
MIDIS = [p.read_bytes() for p in sorted((Path(music21.__file__).parent / "midi" / "testPrimitive")
                                        .glob("test*.mid"))[:3]]
NOISE = os.urandom(200_000)  # incompressible, so a zip holding it is big enough to cut in the middle


def make_params(tmp_path: Path, urls: dict[str, str] | None = None, checksums: dict[str, str] | None = None,
                **download: object) -> dict:
    params = copy.deepcopy(load_params(REPO / "params.yaml"))
    params["raw_dir"] = str(tmp_path / "raw")
    params["download"].update(concurrency=2, rate_limit=1000.0, timeout=2.0, retries=1, backoff=0.01)
    params["download"].update(download)
    params["download"]["checksums"].update(checksums or {})
    params["urls"].update(urls or {})
    return validate(params)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def zip_bytes(files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name), data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16  # a unix symlink; its content is the target
            zf.writestr(info, target)
    return buf.getvalue()


def tar_bytes(files: dict[str, bytes], symlinks: dict[str, str] | None = None,
              hardlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for links, kind in ((symlinks or {}, tarfile.SYMTYPE), (hardlinks or {}, tarfile.LNKTYPE)):
            for name, target in links.items():
                info = tarfile.TarInfo(name)
                info.type, info.linkname = kind, target
                tf.addfile(info)
    return buf.getvalue()


MAESTRO_ZIP = zip_bytes({"maestro-v3.0.0/2004/a.midi": MIDIS[0], "maestro-v3.0.0/2006/b.midi": MIDIS[1],
                         "maestro-v3.0.0/maestro-v3.0.0.csv": b"canonical_title,split\n",
                         "maestro-v3.0.0/noise.bin": NOISE})


def serve_maestro(tmp_path: Path, route: Route, checksum: str | None = None, **download: object):
    server = FixtureServer({"maestro-v3.0.0-midi.zip": route})
    params = make_params(tmp_path, urls={"maestro": server.url("maestro-v3.0.0-midi.zip")},
                         checksums={"maestro": sha256(route.body) if checksum is None else checksum},
                         **download)
    return server, params, tmp_path / "raw" / "maestro"


# -- archives ---------------------------------------------------------------------------------------
def test_archive_is_downloaded_verified_extracted_and_not_fetched_again(tmp_path):
    server, params, dest = serve_maestro(tmp_path, Route(MAESTRO_ZIP))
    with server:
        root = maestro.DATASET.fetch(dest, params)
        assert [p.relative_to(root).as_posix() for p in midi_files(root)] == [
            "maestro-v3.0.0/2004/a.midi", "maestro-v3.0.0/2006/b.midi"]
        assert (root / "maestro-v3.0.0/2004/a.midi").read_bytes() == MIDIS[0]
        assert [h.headers["User-Agent"].split("/")[0] for h in server.hits] == ["dmc"]
        assert not list(dest.parent.glob("*.part"))

        maestro.DATASET.fetch(dest, params)
        assert len(server.hits) == 1  # nothing changed: no request at all


def test_deleted_folder_is_extracted_again_from_the_kept_archive_without_network(tmp_path):
    server, params, dest = serve_maestro(tmp_path, Route(MAESTRO_ZIP))
    with server:
        maestro.DATASET.fetch(dest, params)
        for path in sorted(dest.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        dest.rmdir()
        maestro.DATASET.fetch(dest, params)
        assert len(server.hits) == 1 and len(midi_files(dest)) == 2


def test_connection_dropped_mid_file_resumes_with_range_fetching_only_the_rest(tmp_path):
    cut = 50_000
    server, params, dest = serve_maestro(tmp_path, Route(MAESTRO_ZIP, drop_after=cut), retries=1)
    with server:
        maestro.DATASET.fetch(dest, params)
    first, second = server.hits
    assert (first.status, first.sent, "Range" in first.headers) == (200, cut, False)
    assert second.headers["Range"] == f"bytes={cut}-"
    assert (second.status, second.sent) == (206, len(MAESTRO_ZIP) - cut)
    assert len(midi_files(dest)) == 2


def test_partial_download_survives_a_failed_run_and_the_next_run_resumes_it(tmp_path):
    cut = 70_000
    server, params, dest = serve_maestro(tmp_path, Route(MAESTRO_ZIP, drop_after=cut), retries=0)
    with server:
        with pytest.raises(DmcError, match="connection dropped mid-file"):
            maestro.DATASET.fetch(dest, params)
        assert (dest.parent / "maestro-v3.0.0-midi.zip.part").stat().st_size == cut
        assert not dest.exists()
        maestro.DATASET.fetch(dest, params)
    assert server.hits[1].headers["Range"] == f"bytes={cut}-"
    assert sum(h.sent for h in server.hits) == len(MAESTRO_ZIP)
    assert len(midi_files(dest)) == 2


def test_server_that_ignores_range_gets_a_clean_restart(tmp_path):
    server, params, dest = serve_maestro(tmp_path, Route(MAESTRO_ZIP, drop_after=30_000, ranges=False))
    with server:
        maestro.DATASET.fetch(dest, params)
    assert [h.status for h in server.hits] == [200, 200]
    assert (dest / "maestro-v3.0.0/noise.bin").read_bytes() == NOISE


def test_checksum_mismatch_fails_and_leaves_nothing(tmp_path):
    server, params, dest = serve_maestro(tmp_path, Route(MAESTRO_ZIP), checksum=sha256(b"another file"))
    with server, pytest.raises(DmcError, match="checksum mismatch") as err:
        maestro.DATASET.fetch(dest, params)
    assert "\n" not in str(err.value)
    assert list(dest.parent.iterdir()) == []


def test_fixture_url_without_a_checksum_override_fails_the_published_size(tmp_path):
    server, params, dest = serve_maestro(tmp_path, Route(MAESTRO_ZIP), checksum="")
    with server, pytest.raises(DmcError, match=r"expected 58,416,533"):
        maestro.DATASET.fetch(dest, params)
    assert list(dest.parent.iterdir()) == []


def test_404_fails_at_once_naming_the_dataset_the_url_and_the_folder_fallback(tmp_path):
    server, params, dest = serve_maestro(tmp_path, Route(status=404), retries=3)
    with server, pytest.raises(DmcError) as err:
        maestro.DATASET.fetch(dest, params)
    message = str(err.value)
    assert "dataset 'maestro'" in message and params["urls"]["maestro"] in message and "HTTP 404" in message
    assert "dvc exp run -S dataset=folder -S raw_dir=" in message and "\n" not in message
    assert len(server.hits) == 1  # a definitive answer is not retried
    assert list(dest.parent.iterdir()) == []


def test_500_is_retried_with_backoff_then_fails(tmp_path):
    server, params, dest = serve_maestro(tmp_path, Route(MAESTRO_ZIP, fail=99), retries=2)
    with server, pytest.raises(DmcError, match=r"HTTP 500 .*after 3 tries"):
        maestro.DATASET.fetch(dest, params)
    assert [h.status for h in server.hits] == [500, 500, 500]
    assert not dest.exists()


def test_500_then_recovery_succeeds_on_the_retry(tmp_path):
    server, params, dest = serve_maestro(tmp_path, Route(MAESTRO_ZIP, fail=1), retries=1)
    with server:
        maestro.DATASET.fetch(dest, params)
    assert [h.status for h in server.hits] == [500, 200]


def test_slow_server_hits_the_timeout(tmp_path):
    # The server would answer after 30 s: giving up well before that is the client's own timeout, with room
    # for a loaded machine.
    server, params, dest = serve_maestro(tmp_path, Route(MAESTRO_ZIP, delay=30), timeout=0.3, retries=0)
    start = time.monotonic()
    with server, pytest.raises(DmcError, match=r"no answer within 0\.3 s"):
        maestro.DATASET.fetch(dest, params)
    assert time.monotonic() - start < 15
    assert not dest.exists()


def test_unreachable_source_is_one_line_naming_dataset_url_and_folder_fallback(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/lmd_full.tar.gz"
    params = make_params(tmp_path, urls={"lakh": url}, retries=0)
    with pytest.raises(DmcError) as err:
        lakh.DATASET.fetch(tmp_path / "raw" / "lakh", params)
    message = str(err.value)
    assert message.startswith(f"dataset 'lakh': cannot fetch {url}") and "dataset=folder" in message
    assert not (tmp_path / "raw" / "lakh").exists()


def _unsafe_archives(outside: Path) -> dict[str, tuple[str, bytes]]:
    good = {"lmd/a.mid": MIDIS[0]}
    return {
        "zip-dotdot": ("zip", zip_bytes({**good, "../../evil.mid": b"MThd"})),
        "zip-absolute": ("zip", zip_bytes({**good, str(outside / "evil.mid"): b"MThd"})),
        "zip-symlink": ("zip", zip_bytes(good, symlinks={"lmd/link": str(outside)})),
        "zip-relative-symlink": ("zip", zip_bytes(good, symlinks={"lmd/link": "../../../outside"})),
        "tar-dotdot": ("tar", tar_bytes({**good, "lmd/../../evil.mid": b"MThd"})),
        "tar-absolute": ("tar", tar_bytes({**good, str(outside / "evil.mid"): b"MThd"})),
        "tar-symlink": ("tar", tar_bytes(good, symlinks={"lmd/link": "../../outside"})),
        "tar-hardlink": ("tar", tar_bytes(good, hardlinks={"lmd/hard.mid": "../outside/x.mid"})),
    }


@pytest.mark.parametrize("case", list(_unsafe_archives(Path("/x"))))
def test_unsafe_archive_entries_are_refused_and_nothing_is_written_outside(tmp_path, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    kind, data = _unsafe_archives(outside)[case]
    name = "maestro.zip" if kind == "zip" else "lmd_full.tar.gz"
    dataset = maestro if kind == "zip" else lakh
    with FixtureServer({name: data}) as server:
        params = make_params(tmp_path, urls={dataset.DATASET.name: server.url(name)},
                             checksums={dataset.DATASET.name: sha256(data)})
        with pytest.raises(DmcError, match="refusing"):
            dataset.DATASET.fetch(tmp_path / "raw" / dataset.DATASET.name, params)
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "raw"]
    assert [p.name for p in (tmp_path / "raw").iterdir()] == [name]  # the verified archive, no temp folder


def test_links_inside_an_archive_are_skipped_not_created(tmp_path):
    data = tar_bytes({"lmd/a.mid": MIDIS[0]}, symlinks={"lmd/b.mid": "a.mid"},
                     hardlinks={"lmd/c.mid": "lmd/a.mid"})
    with FixtureServer({"lmd_full.tar.gz": data}) as server:
        params = make_params(tmp_path, urls={"lakh": server.url("lmd_full.tar.gz")},
                             checksums={"lakh": sha256(data)})
        root = lakh.DATASET.fetch(tmp_path / "raw" / "lakh", params)
    assert [p.name for p in midi_files(root)] == ["a.mid"]
    assert not any(p.is_symlink() for p in root.rglob("*"))


def test_zip_member_with_an_empty_name_is_one_line_error_from_extract_and_from_a_served_archive(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("lmd/a.mid", MIDIS[0])
        zf.writestr(zipfile.ZipInfo(""), b"x")
    data = buf.getvalue()
    (tmp_path / "empty.zip").write_bytes(data)
    with pytest.raises(DmcError, match="refusing an entry with an empty name") as err:
        extract_archive(tmp_path / "empty.zip", tmp_path / "out", {}, "test")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()

    server, params, dest = serve_maestro(tmp_path, Route(data))
    with server, pytest.raises(DmcError, match="refusing an entry with an empty name"):
        maestro.DATASET.fetch(dest, params)
    assert not dest.exists()


def test_url_param_that_is_not_a_url_is_one_line_naming_the_key(tmp_path):
    params = copy.deepcopy(load_params(REPO / "params.yaml"))
    params["urls"]["maestro"] = "notaurl"
    with pytest.raises(DmcError, match=r"^params: 'urls.maestro' must be an http:// or https:// URL, "
                                       r"got 'notaurl'$"):
        validate(params)


def deflated_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


ZEROS = bytes(20 << 20)  # 20 MB that deflate to 20 KB: a small bomb


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_archive_member_that_expands_too_much_is_refused_with_the_default_limits(tmp_path, kind):
    files = {"lmd/a.mid": MIDIS[0], "lmd/bomb.mid": ZEROS}
    data = deflated_zip(files) if kind == "zip" else tar_bytes(files)
    assert len(data) < 100_000
    (tmp_path / "bomb").write_bytes(data)
    with pytest.raises(DmcError, match=r"refusing entry 'lmd/bomb.mid': it expands more than 100 times "
                                       r"\(download.max_ratio\)"):
        extract_archive(tmp_path / "bomb", tmp_path / "out", {}, "test",
                        Limits.from_params(make_params(tmp_path)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb"]  # no temp folder, no output


def test_ratio_and_total_limits_are_params(tmp_path):
    data = tar_bytes({"lmd/a.mid": MIDIS[0], "lmd/zeros.mid": bytes(2 << 20)})
    with FixtureServer({"lmd_full.tar.gz": data}) as server:
        def fetch(**download: object) -> Path:
            params = make_params(tmp_path, urls={"lakh": server.url("lmd_full.tar.gz")},
                                 checksums={"lakh": sha256(data)}, **download)
            return lakh.DATASET.fetch(tmp_path / "raw" / "lakh", params)

        with pytest.raises(DmcError, match=r"download.max_ratio"):
            fetch(max_ratio=10.0)
        with pytest.raises(DmcError, match=r"add up to more than 0.001 GB \(download.max_extract_gb\)"):
            fetch(max_extract_gb=0.001)
        assert len(midi_files(fetch())) == 2  # 2 MB of zeros is within the defaults


def test_zip_symlink_member_is_judged_by_its_size_and_never_read_whole(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("lmd/a.mid", MIDIS[0])
        info = zipfile.ZipInfo("lmd/link")
        info.external_attr = 0o120777 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, b"a" * (5 << 20))  # a "target" of 5 MB
    (tmp_path / "link.zip").write_bytes(buf.getvalue())
    tracemalloc.start()
    try:
        with pytest.raises(DmcError, match=r"refusing link 'lmd/link': its target is 5,242,880 bytes"):
            extract_archive(tmp_path / "link.zip", tmp_path / "out", {}, "test")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_duplicate_member_names_are_refused(tmp_path, kind):
    if kind == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
            zf.writestr("lmd/a.mid", MIDIS[0])
            zf.writestr("lmd/./a.mid", MIDIS[1])
            zf.writestr("lmd/a.mid", MIDIS[1])
        data = buf.getvalue()
    else:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            for midi in MIDIS[:2]:
                info = tarfile.TarInfo("lmd/a.mid")
                info.size = len(midi)
                tf.addfile(info, io.BytesIO(midi))
        data = buf.getvalue()
    (tmp_path / "dup").write_bytes(data)
    with pytest.raises(DmcError, match=r"refusing entry 'lmd/(\./)?a.mid': a second entry of that name"):
        extract_archive(tmp_path / "dup", tmp_path / "out", {}, "test")
    assert not (tmp_path / "out").exists()


def test_206_starting_elsewhere_than_asked_restarts_the_download_from_the_start(tmp_path):
    cut = 50_000
    server, params, dest = serve_maestro(tmp_path, Route(MAESTRO_ZIP, drop_after=cut, range_shift=4096))
    with server:
        maestro.DATASET.fetch(dest, params)
    first, shifted, restart = server.hits
    assert (first.sent, shifted.status, shifted.headers["Range"]) == (cut, 206, f"bytes={cut}-")
    assert (restart.status, "Range" in restart.headers, restart.sent) == (200, False, len(MAESTRO_ZIP))
    assert (dest / "maestro-v3.0.0/noise.bin").read_bytes() == NOISE


def test_103_early_hints_is_skipped_and_the_real_answer_read(tmp_path):
    with FixtureServer({"a.mid": Route(MIDIS[0], early_hints=True)}) as server:
        body, _ = Client(Settings(timeout=2.0)).get(server.url("a.mid"))
    assert body == MIDIS[0]


def test_user_agent_is_dmc_with_its_version_and_the_contact_param(tmp_path):
    with FixtureServer({"a": b"x"}) as server:
        settings = Settings.from_params(make_params(tmp_path, contact="me@example.org"))
        Client(settings).get(server.url("a"))
    agent = server.hits[0].headers["User-Agent"]
    assert agent.startswith(f"dmc/{importlib.metadata.version('dmc')} (")
    assert "contact: me@example.org" in agent
    assert "Mozilla" not in agent


def test_archive_refused_with_403_says_the_site_may_refuse_the_user_agent(tmp_path):
    server, params, dest = serve_maestro(tmp_path, Route(status=403))
    with server, pytest.raises(DmcError, match=r"HTTP 403 .*may refuse dmc's User-Agent 'dmc/.*does not "
                                               r"pose as a browser.*dataset=folder"):
        maestro.DATASET.fetch(dest, params)


# -- crawls -----------------------------------------------------------------------------------------
def piano_midi_site() -> dict[str, Route | bytes | str]:
    """piano-midi.de as it is: composer pages link each piece twice, `<piece>.mid` and
    `<piece>_format0.mid` in one folder; a missing file answers 302 to the (HTML) home page."""
    return {
        "robots.txt": Route(b"User-agent: *\nDisallow: /liszt.htm\n", content_type="text/plain"),
        "": "<html>piano-midi.de home</html>",
        "midi_files.htm": '<tr class="midi"><td class="midi"><a href="bach.htm">Bach</a></td></tr> '
                          '<a href="chopin.htm">Chopin</a> <a href="liszt.htm">Liszt</a> '
                          '<a href="http://elsewhere.example/x.htm">x</a>',
        "bach.htm": '<a href="midis/bach/bach_846.mid">846</a> '
                    '<a href="midis/bach/bach_846_format0.mid">format 0</a> '
                    '<a href="midis/bach/bach_847.mid#top">847</a> '
                    '<a href="midis/bach/bach_847_format0.mid">format 0</a>',
        "chopin.htm": '<a href="/midis/chopin/chpn_op10_e01.mid">op 10</a> '
                      '<a href="http://piano-midi.de/midis/chopin/chpn_op10_e01_format0.mid">format 0</a> '
                      '<a href="midis/chopin/gone.mid">x</a>',
        "liszt.htm": '<a href="midis/liszt/liz_et1.mid">Etude</a>',
        "midis/bach/bach_846.mid": MIDIS[0],
        "midis/bach/bach_846_format0.mid": MIDIS[0],
        "midis/bach/bach_847.mid": Route(redirect="/"),  # missing: the home page instead
        "midis/bach/bach_847_format0.mid": MIDIS[2],
        "midis/chopin/chpn_op10_e01.mid": MIDIS[1],
        "midis/chopin/chpn_op10_e01_format0.mid": MIDIS[1],
        "midis/liszt/liz_et1.mid": MIDIS[2],
    }


def test_classical_crawl_keeps_one_file_per_piece_format0_only_as_fallback(tmp_path, capsys):
    with FixtureServer(piano_midi_site()) as server:
        params = make_params(tmp_path, urls={"classical": server.url()})
        root = classical.DATASET.fetch(tmp_path / "raw" / "classical", params)
        assert [p.relative_to(root).as_posix() for p in midi_files(root)] == [
            "bach/bach_846.mid", "bach/bach_847_format0.mid", "chopin/chpn_op10_e01.mid"]
        assert (root / "bach/bach_846.mid").read_bytes() == MIDIS[0]
        fetched = {h.path for h in server.hits}
        assert not fetched & {"/midis/bach/bach_846_format0.mid", "/midis/chopin/chpn_op10_e01_format0.mid"}
        assert "/liszt.htm" not in fetched  # robots.txt
        report = capsys.readouterr().err
        assert "1 not MIDI, skipped" in report and "bach_847.mid" in report
        assert "1 not found" in report and "1 disallowed by robots.txt" in report

        before = len(server.hits)
        classical.DATASET.fetch(root, params)
        assert len(server.hits) == before  # idempotent: a finished crawl asks nothing


def test_format0_copies_an_older_crawl_kept_beside_the_standard_files_are_removed(tmp_path):
    dest = tmp_path / "raw" / "classical"
    (dest / "bach").mkdir(parents=True)
    for name in ("bach_846.mid", "bach_846_format0.mid"):
        (dest / "bach" / name).write_bytes(MIDIS[0])
    with open(dest / CRAWL_LOG, "w") as log:  # what the crawl before one-file-per-piece left
        for name in ("bach_846.mid", "bach_846_format0.mid"):
            log.write(json.dumps({"file": f"midis/bach/{name}", "path": f"bach/{name}"}) + "\n")
    with FixtureServer(piano_midi_site()) as server:
        classical.DATASET.fetch(dest, make_params(tmp_path, urls={"classical": server.url()}))
        assert "/midis/bach/bach_846.mid" not in {h.path for h in server.hits}  # already kept
    assert [p.name for p in midi_files(dest)] == ["bach_846.mid", "bach_847_format0.mid", "chpn_op10_e01.mid"]
    assert json.loads((dest / COMPLETE).read_text())["files"] == 3


def test_robots_txt_answering_403_is_an_error_that_names_the_user_agent(tmp_path):
    site = {**piano_midi_site(), "robots.txt": Route(status=403)}
    with FixtureServer(site) as server:
        params = make_params(tmp_path, urls={"classical": server.url()})
        with pytest.raises(DmcError, match=r"seed page .* is disallowed by the site's robots.txt "
                                           r"\(robots.txt itself answered HTTP 403 \(the site may refuse "
                                           r"dmc's User-Agent"):
            classical.DATASET.fetch(tmp_path / "raw" / "classical", params)


def test_every_numbered_page_refused_says_the_site_may_refuse_the_user_agent(tmp_path):
    site = {"download3-1": Route(status=403), "download3-2": Route(status=403)}
    with FixtureServer(site) as server:
        params = make_params(tmp_path, urls={"freemidi": server.url()}, freemidi_ids=2)
        with pytest.raises(DmcError, match=r"found no MIDI file \(2 refused \(HTTP 401/403/406\) .*the site "
                                           r"may refuse dmc's User-Agent"):
            freemidi.DATASET.fetch(tmp_path / "raw" / "freemidi", params)


def test_interrupted_crawl_resumes_with_only_what_is_missing(tmp_path):
    site = piano_midi_site()
    site["midis/chopin/chpn_op10_e01.mid"] = Route(MIDIS[1], fail=1)
    with FixtureServer(site) as server:
        params = make_params(tmp_path, urls={"classical": server.url()}, retries=0)
        dest = tmp_path / "raw" / "classical"
        with pytest.raises(DmcError, match=r"1 URLs still failing .*2 MIDI files kept so far, re-run"):
            classical.DATASET.fetch(dest, params)
        assert [p.name for p in midi_files(dest)] == ["bach_846.mid", "bach_847_format0.mid"]
        assert not (dest / COMPLETE).exists()
        with open(dest / CRAWL_LOG, "a") as log:
            log.write('{"file": "midis/chopin/chpn_op1')  # a crash in the middle of a line
        before = len(server.hits)
        classical.DATASET.fetch(dest, params)
        assert {h.path for h in server.hits[before:]} == {"/robots.txt", "/midis/chopin/chpn_op10_e01.mid"}
    assert [p.name for p in midi_files(dest)] == ["bach_846.mid", "bach_847_format0.mid", "chpn_op10_e01.mid"]
    assert (dest / COMPLETE).exists()


@pytest.fixture()
def test_hosts(monkeypatch):
    """Names under `.test` (`www.ff.test`, `ff.test`, ...) resolve to 127.0.0.1, so a fixture can play a
    site with and without `www.`."""
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        return real("127.0.0.1" if str(host).endswith(".test") else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def final_fantasy_site(server: FixtureServer) -> dict[str, Route | bytes | str]:
    """thefinalfantasy.net as it is: `site/midi-collection.html` links `<game>/music-midi.html` pages;
    `www.` redirects to the bare host (see `bare_host_only`)."""
    port = server.httpd.server_address[1]
    return {
        "site/midi-collection.html": '<a href="../ff6/music-midi.html">VI</a> '
                                     f'<a href="https://www.ff.test:{port}/ff7/music-midi.html">VII</a> '
                                     '<a href="../ff7/story.html">story</a>',
        "ff6/music-midi.html": '<a href="midi/terra.MID">Terra</a>',
        "ff7/music-midi.html": '<a href="/ff7/midi/One%20Winged%20Angel.mid">One-Winged Angel</a>',
        "ff7/story.html": '<a href="/ff7/midi/unused.mid">x</a>',
        "ff6/midi/terra.MID": MIDIS[1],
        "ff7/midi/One%20Winged%20Angel.mid": MIDIS[0],
        "ff7/midi/unused.mid": MIDIS[2],
    }


def bare_host_only(server: FixtureServer):
    """A dynamic route: a request for `www.<host>` is sent, permanently, to `<host>`."""
    def route(path: str, headers: dict[str, str]) -> Route | None:
        host = headers.get("Host", "")
        return Route(status=301, redirect=f"http://{host[4:]}{path}") if host.startswith("www.") else None
    return route


def test_final_fantasy_crawl_from_www_moves_to_the_bare_host_and_follows_game_pages(tmp_path, test_hosts):
    with FixtureServer() as server:
        for path, route in final_fantasy_site(server).items():
            server.add(path, route)
        server.dynamic = bare_host_only(server)
        port = server.httpd.server_address[1]
        params = make_params(tmp_path, urls={"final-fantasy": f"http://www.ff.test:{port}"})
        root = final_fantasy.DATASET.fetch(tmp_path / "raw" / "final-fantasy", params)
        assert "/ff7/midi/unused.mid" not in {h.path for h in server.hits}
        hosts = [h.headers["Host"] for h in server.hits if h.path != "/robots.txt"]
        assert hosts[0] == f"www.ff.test:{port}" and set(hosts[2:]) == {f"ff.test:{port}"}  # moved once
    assert [p.relative_to(root).as_posix() for p in midi_files(root)] == [
        "ff6/midi/terra.MID", "ff7/midi/One Winged Angel.mid"]


def test_links_to_www_or_https_of_the_same_site_stay_on_the_site():
    html = ('<a href="https://www.example.org/a.mid">a</a> <a href="http://example.org/b.mid">b</a> '
            '<a href="https://other.org/c.mid">c</a> <a href="//WWW.example.org/d.mid">d</a>')
    assert page_links(html, "http://example.org/index.html", "https://www.example.org") == [
        "a.mid", "b.mid", "d.mid"]


def test_seed_redirected_off_the_site_is_one_line_naming_both_urls(tmp_path, test_hosts):
    with FixtureServer() as server:
        port = server.httpd.server_address[1]
        moved = f"http://parked.test:{port}/lander"
        server.add("site/midi-collection.html", Route(status=301, redirect=moved))
        server.add("lander", "<html>this domain is for sale</html>")
        url = f"http://ff.test:{port}"
        params = make_params(tmp_path, urls={"final-fantasy": url})
        with pytest.raises(DmcError) as err:
            final_fantasy.DATASET.fetch(tmp_path / "raw" / "final-fantasy", params)
    message = str(err.value)
    assert f"seed page {url}/site/midi-collection.html redirected to {moved}" in message
    assert "off the site" in message and "urls.final-fantasy" in message and "\n" not in message


@pytest.mark.parametrize("status", [404, 500])
def test_seed_answering_an_error_fails_loudly_and_writes_no_complete_marker(tmp_path, capsys, status):
    site = {"site/midi-collection.html": Route(status=status)}
    with FixtureServer(site) as server:
        params = make_params(tmp_path, urls={"final-fantasy": server.url()}, retries=1)
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        assert dmc(["download", "final-fantasy", "--params", str(tmp_path / "params.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    seed = server.url("site/midi-collection.html")
    assert err.startswith(f"dmc: error: dataset 'final-fantasy': seed page {seed}")
    assert f"HTTP {status}" in err and "dataset=folder" in err
    assert not (tmp_path / "raw" / "final-fantasy" / COMPLETE).exists()


def test_crawl_that_finds_no_midi_file_fails_and_writes_no_complete_marker(tmp_path):
    site = {"site/midi-collection.html": '<a href="/ff6/music-midi.html">VI</a>',
            "ff6/music-midi.html": '<a href="/ff6/midi/terra.mid">Terra</a>',
            "ff6/midi/terra.mid": Route(b"<html>gone</html>", content_type="text/html")}
    with FixtureServer(site) as server:
        dest = tmp_path / "raw" / "final-fantasy"
        with pytest.raises(DmcError, match=r"dataset 'final-fantasy': the crawl of http://127.0.0.1:\d+/ "
                                           r"found no MIDI file \(1 not MIDI, skipped .*dataset=folder"):
            final_fantasy.DATASET.fetch(dest, make_params(tmp_path, urls={"final-fantasy": server.url()}))
    assert not (dest / COMPLETE).exists()


def test_seed_refused_with_403_says_the_site_may_refuse_the_user_agent(tmp_path):
    with FixtureServer({"midi_files.htm": Route(status=403)}) as server:
        params = make_params(tmp_path, urls={"classical": server.url()})
        with pytest.raises(DmcError, match=r"seed page .*answered HTTP 403 Forbidden \(the site may refuse "
                                           r"dmc's User-Agent 'dmc/.*set download.contact"):
            classical.DATASET.fetch(tmp_path / "raw" / "classical", params)


class FreemidiSite:
    """freemidi.org as its working scrapers see it, strict. `download3-<id>` redirects to
    `download3-<id>-<title>`, which opens a PHP session (or goes on with the one the cookie names) and
    remembers it as the session's current song. `getter-<id>` serves the file only to a session whose
    current song is <id>, with that song's page as Referer; anything else answers 302 to a page that
    answers 500. Files may be sent after a `103 Early Hints`."""

    def __init__(self, server: FixtureServer, songs: dict[int, Route]):
        self.server, self.songs = server, songs
        self.sessions: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, path: str, headers: dict[str, str]) -> Route | None:
        if match := re.fullmatch(r"/download3-(\d+)", path):
            song = int(match.group(1))
            return Route(redirect=f"/download3-{song}-song-{song}") if song in self.songs else None
        if match := re.fullmatch(r"/download3-(\d+)-song-\d+", path):
            song = int(match.group(1))
            with self.lock:
                session = self._session(headers)
                new = session is None
                session = session or f"s{len(self.sessions)}"
                self.sessions[session] = song
            page = f'<a href="getter-{song}">Download MIDI</a> <a href="download3-{song + 100}">related</a>'
            return Route(page.encode(), content_type="text/html",
                         headers={"Set-Cookie": f"PHPSESSID={session}; path=/"} if new else {})
        if match := re.fullmatch(r"/getter-(\d+)", path):
            song = int(match.group(1))
            pages = (self.server.url(f"download3-{song}"), self.server.url(f"download3-{song}-song-{song}"))
            with self.lock:
                current = self.sessions.get(self._session(headers) or "")
            if current != song or headers.get("Referer") not in pages:
                return Route(redirect="/error")
            return self.songs[song]
        return Route(status=500) if path == "/error" else None

    def _session(self, headers: dict[str, str]) -> str | None:
        match = re.search(r"PHPSESSID=(\w+)", headers.get("Cookie", ""))
        return match.group(1) if match and match.group(1) in self.sessions else None


def test_freemidi_fetches_each_getter_right_after_its_page_in_its_session(tmp_path, capsys):
    songs = {1: Route(MIDIS[0]), 3: Route(b"<html>please log in</html>", content_type="text/html"),
             4: Route(MIDIS[1], early_hints=True), 5: Route(MIDIS[2])}  # id 2 is absent: 404
    with FixtureServer() as server:
        server.dynamic = FreemidiSite(server, songs)
        dest = tmp_path / "raw" / "freemidi"
        freemidi.DATASET.fetch(dest, make_params(tmp_path, urls={"freemidi": server.url()}, freemidi_ids=4))
        assert [p.name for p in midi_files(dest)] == ["1.mid", "4.mid"]
        assert "1 not MIDI, skipped (e.g. " in capsys.readouterr().err
        getter = server.hits_to("getter-1")[0]
        assert getter.headers["Referer"] == server.url("download3-1-song-1")
        assert all(h.status == 200 for h in server.hits if h.path.startswith("/getter"))

        before = len(server.hits)
        freemidi.DATASET.fetch(dest, make_params(tmp_path, urls={"freemidi": server.url()}, freemidi_ids=5))
        assert {h.path for h in server.hits[before:]} == {
            "/robots.txt", "/download3-5", "/download3-5-song-5", "/getter-5"}
    assert [p.name for p in midi_files(dest)] == ["1.mid", "4.mid", "5.mid"]


def test_freemidi_getter_that_failed_is_fetched_again_after_a_fresh_visit_of_its_page(tmp_path):
    songs = {1: Route(MIDIS[0]), 2: Route(MIDIS[1], fail=1)}
    with FixtureServer() as server:
        server.dynamic = FreemidiSite(server, songs)
        dest = tmp_path / "raw" / "freemidi"
        params = make_params(tmp_path, urls={"freemidi": server.url()}, freemidi_ids=2, retries=0)
        with pytest.raises(DmcError, match=r"1 URLs still failing .*getter-2.*1 MIDI files kept so far"):
            freemidi.DATASET.fetch(dest, params)
        before = len(server.hits)
        freemidi.DATASET.fetch(dest, params)
        assert [h.path for h in server.hits[before:]] == [
            "/robots.txt", "/download3-2", "/download3-2-song-2", "/getter-2"]
    assert [p.name for p in midi_files(dest)] == ["1.mid", "2.mid"]


def test_robots_txt_forbidding_everything_is_an_error_naming_robots_txt(tmp_path):
    site = {"robots.txt": Route(b"User-agent: dmc\nDisallow: /\n", content_type="text/plain"),
            "download3-1": '<a href="getter-1">x</a>', "getter-1": MIDIS[0]}
    with FixtureServer(site) as server:
        dest = tmp_path / "raw" / "freemidi"
        with pytest.raises(DmcError, match=r"found no MIDI file \(1 disallowed by robots.txt"):
            freemidi.DATASET.fetch(dest, make_params(tmp_path, urls={"freemidi": server.url()},
                                                     freemidi_ids=1))
        assert [h.path for h in server.hits] == ["/robots.txt"]
    assert midi_files(dest) == [] and not (dest / COMPLETE).exists()


def test_local_path_cannot_climb_out_and_always_ends_in_mid():
    assert local_path("a/%2E%2E/%2E%2E/evil") == "a/evil.mid"
    assert local_path("x/some:odd*name.midi") == "x/some_odd_name.midi"


def test_rate_limit_spaces_requests_to_one_host(tmp_path):
    with FixtureServer({"a": b"x"}) as server:
        client = Client(Settings(rate_limit=20.0, timeout=2.0))
        start = time.monotonic()
        for _ in range(5):
            client.get(server.url("a"))
        assert time.monotonic() - start >= 0.19  # 4 gaps of 1/20 s


# -- the stage and the command ----------------------------------------------------------------------
def test_download_stage_with_fixture_url_writes_the_manifest(tmp_path):
    with FixtureServer({"maestro-v3.0.0-midi.zip": MAESTRO_ZIP}) as server:
        params = make_params(tmp_path, urls={"maestro": server.url("maestro-v3.0.0-midi.zip")},
                             checksums={"maestro": sha256(MAESTRO_ZIP)})
        params.update(dataset="maestro", raw_dir="data/raw")
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        env = {**os.environ, "PYTHONPATH": str(REPO), "DMC_TRACKING": "0"}  # MLflow has its own tests
        done = subprocess.run([sys.executable, "-m", "stages.download"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "data/manifest.json").read_text())
    assert manifest["dataset"] == "maestro" and manifest["root"] == "data/raw/maestro"
    assert [f["path"] for f in manifest["files"]] == ["maestro-v3.0.0/2004/a.midi",
                                                      "maestro-v3.0.0/2006/b.midi"]
    assert manifest["files"][0]["sha256"] == hashlib.sha256(MIDIS[0]).hexdigest()


def test_dmc_download_fetches_one_dataset_and_list_shows_it_present(tmp_path, capsys):
    with FixtureServer(piano_midi_site()) as server:
        params = make_params(tmp_path, urls={"classical": server.url()})
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        assert dmc(["download", "classical", "--params", str(tmp_path / "params.yaml")]) == 0
    assert "classical: 3 MIDI files under" in capsys.readouterr().out
    assert dmc(["download", "--list", "--params", str(tmp_path / "params.yaml")]) == 0
    table = capsys.readouterr().out
    rows = {line.split()[0]: line for line in table.splitlines() if line and not line.startswith(" ")}
    assert "complete (3 files)" in rows["classical"] and "CC BY-SA" in rows["classical"]
    assert rows["maestro"].split()[1] == "no" and "58 MB" in rows["maestro"]
    assert f"urls.classical = {server.url()}" in table


def test_dmc_download_unreachable_exits_2_with_one_line(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    params = make_params(tmp_path, urls={"freemidi": f"http://127.0.0.1:{port}"}, retries=0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert dmc(["download", "freemidi", "--params", str(tmp_path / "params.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dmc: error: dataset 'freemidi': cannot fetch") and "\n" not in err
    assert not (tmp_path / "raw").exists()
