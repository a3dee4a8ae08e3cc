"""The download stage against a real HTTP server on 127.0.0.1 (tests/http_fixture.py).

Archives are built here from real MIDI files (the ones inside the music21 wheel); the crawled sites are
small fixture sites shaped like piano-midi.de, thefinalfantasy.net and freemidi.org.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import music21
import pytest
import yaml
from http_fixture import FixtureServer, Route

from pipeline.cli import main as dmc
from pipeline.datasets import classical, final_fantasy, freemidi, lakh, maestro, midi_files
from pipeline.download import CRAWL_LOG, Client, Settings, local_path
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
    server, params, dest = serve_maestro(tmp_path, Route(MAESTRO_ZIP, delay=1.5), timeout=0.3, retries=0)
    start = time.monotonic()
    with server, pytest.raises(DmcError, match=r"no answer within 0\.3 s"):
        maestro.DATASET.fetch(dest, params)
    assert time.monotonic() - start < 1.4
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


# -- crawls -----------------------------------------------------------------------------------------
def piano_midi_site() -> dict[str, Route | bytes | str]:
    return {
        "robots.txt": Route(b"User-agent: *\nDisallow: /liszt.htm\n", content_type="text/plain"),
        "midi_files.htm": '<a href="bach.htm">Bach</a> <a href="chopin.htm">Chopin</a> '
                          '<a href="liszt.htm">Liszt</a> <a href="http://elsewhere.example/x.htm">x</a>',
        "bach.htm": '<a href="midis/bach/bach_846.mid">846</a> '
                    '<a href="midis/bach/format0/bach_846_format0.mid">format 0</a> '
                    '<a href="midis/bach/bach_847.mid#top">847</a>',
        "chopin.htm": '<a href="/midis/chopin/chpn_op10_e01.mid">op 10</a> '
                      '<a href="midis/chopin/gone.mid">x</a>',
        "liszt.htm": '<a href="midis/liszt/liz_et1.mid">Etude</a>',
        "midis/bach/bach_846.mid": MIDIS[0],
        "midis/bach/format0/bach_846_format0.mid": MIDIS[0],
        "midis/bach/bach_847.mid": Route(b"<html>Moved</html>", content_type="text/html"),  # not MIDI
        "midis/chopin/chpn_op10_e01.mid": MIDIS[1],
        "midis/liszt/liz_et1.mid": MIDIS[2],
    }


def test_classical_crawl_keeps_the_midi_files_and_reports_the_rest(tmp_path, capsys):
    with FixtureServer(piano_midi_site()) as server:
        params = make_params(tmp_path, urls={"classical": server.url()})
        root = classical.DATASET.fetch(tmp_path / "raw" / "classical", params)
        assert [p.relative_to(root).as_posix() for p in midi_files(root)] == [
            "bach/bach_846.mid", "chopin/chpn_op10_e01.mid"]
        assert (root / "bach/bach_846.mid").read_bytes() == MIDIS[0]
        fetched = {h.path for h in server.hits}
        assert "/midis/bach/format0/bach_846_format0.mid" not in fetched  # the format-0 duplicates
        assert "/liszt.htm" not in fetched  # robots.txt
        report = capsys.readouterr().err
        assert "1 not MIDI, skipped" in report and "bach_847.mid" in report
        assert "1 not found" in report and "1 disallowed by robots.txt" in report

        before = len(server.hits)
        classical.DATASET.fetch(root, params)
        assert len(server.hits) == before  # idempotent: a finished crawl asks nothing


def test_interrupted_crawl_resumes_with_only_what_is_missing(tmp_path):
    site = piano_midi_site()
    site["midis/chopin/chpn_op10_e01.mid"] = Route(MIDIS[1], fail=1)
    with FixtureServer(site) as server:
        params = make_params(tmp_path, urls={"classical": server.url()}, retries=0)
        dest = tmp_path / "raw" / "classical"
        with pytest.raises(DmcError, match=r"1 URLs still failing .*re-run to resume"):
            classical.DATASET.fetch(dest, params)
        assert [p.name for p in midi_files(dest)] == ["bach_846.mid"]
        with open(dest / CRAWL_LOG, "a") as log:
            log.write('{"file": "midis/chopin/chpn_op1')  # a crash in the middle of a line
        before = len(server.hits)
        classical.DATASET.fetch(dest, params)
        assert {h.path for h in server.hits[before:]} == {"/robots.txt", "/midis/chopin/chpn_op10_e01.mid"}
    assert [p.name for p in midi_files(dest)] == ["bach_846.mid", "chpn_op10_e01.mid"]


def test_final_fantasy_crawl_follows_game_music_pages(tmp_path):
    site = {
        "games/": '<a href="ff7/music/">VII</a> <a href="ff7/story/">story</a> '
                  '<a href="/games/ff6/music">VI</a>',
        "games/ff7/music/": '<a href="/files/ff7/One%20Winged%20Angel.mid">One-Winged Angel</a>',
        "games/ff7/story/": '<a href="/files/ff7/unused.mid">x</a>',
        "games/ff6/music": '<a href="../../files/ff6/terra.MID">Terra</a>',
        "files/ff7/One%20Winged%20Angel.mid": MIDIS[0],
        "files/ff6/terra.MID": MIDIS[1],
    }
    with FixtureServer(site) as server:
        params = make_params(tmp_path, urls={"final-fantasy": server.url()})
        root = final_fantasy.DATASET.fetch(tmp_path / "raw" / "final-fantasy", params)
        assert "/files/ff7/unused.mid" not in {h.path for h in server.hits}
    assert [p.relative_to(root).as_posix() for p in midi_files(root)] == [
        "files/ff6/terra.MID", "files/ff7/One Winged Angel.mid"]


def test_freemidi_crawl_walks_numbered_pages_and_extends_when_ids_grow(tmp_path, capsys):
    def page(i: int) -> str:
        return f'<a href="getter-{i}">Download MIDI</a> <a href="download3-{i + 100}">related</a>'

    site = {"download3-1": page(1), "getter-1": MIDIS[0],
            "download3-3": page(3),
            "getter-3": Route(b"<html>please log in</html>", content_type="text/html"),
            "download3-4": page(4), "getter-4": MIDIS[1]}  # id 2 is absent: 404
    with FixtureServer(site) as server:
        dest = tmp_path / "raw" / "freemidi"
        freemidi.DATASET.fetch(dest, make_params(tmp_path, urls={"freemidi": server.url()}, freemidi_ids=3))
        assert [p.name for p in midi_files(dest)] == ["1.mid"]
        assert "1 not MIDI, skipped (e.g. " in capsys.readouterr().err
        getter = server.hits_to("getter-1")[0]
        assert getter.headers["Referer"] == server.url("download3-1")

        before = len(server.hits)
        freemidi.DATASET.fetch(dest, make_params(tmp_path, urls={"freemidi": server.url()}, freemidi_ids=4))
        assert {h.path for h in server.hits[before:]} == {"/robots.txt", "/download3-4", "/getter-4"}
    assert [p.name for p in midi_files(dest)] == ["1.mid", "4.mid"]


def test_robots_txt_forbidding_everything_downloads_nothing(tmp_path):
    site = {"robots.txt": Route(b"User-agent: dmc\nDisallow: /\n", content_type="text/plain"),
            "download3-1": '<a href="getter-1">x</a>', "getter-1": MIDIS[0]}
    with FixtureServer(site) as server:
        dest = tmp_path / "raw" / "freemidi"
        freemidi.DATASET.fetch(dest, make_params(tmp_path, urls={"freemidi": server.url()}, freemidi_ids=1))
        assert [h.path for h in server.hits] == ["/robots.txt"]
    assert midi_files(dest) == []


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
                              capture_output=True, text=True, timeout=60)
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
    assert "classical: 2 MIDI files under" in capsys.readouterr().out
    assert dmc(["download", "--list", "--params", str(tmp_path / "params.yaml")]) == 0
    table = capsys.readouterr().out
    rows = {line.split()[0]: line for line in table.splitlines() if line and not line.startswith(" ")}
    assert "complete (2 files)" in rows["classical"] and "CC BY-SA" in rows["classical"]
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
