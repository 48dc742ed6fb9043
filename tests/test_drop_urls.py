"""File drops and exports at fsspec URLs: ``memory://`` and ``file://`` read like a local folder.

The drop's rules hold whatever the filesystem: the day's files in the window, each content
once (the manifest, by checksum), a file still being written left for a later batch (the
settle rule, on the filesystem's own modification times), GBK lines decoded. fsspec's
``http://`` filesystem needs aiohttp, which the project does not install, so HTTP drops are
not covered here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
import uuid

import fsspec
import psycopg2
import pytest
from test_servicenow import SAMPLE

from serviceloop.extract import drop_files
from serviceloop.ingest import ingest_batch
from serviceloop.servicenow import Settings, parse_export
from serviceloop.sources import SOURCES, load_sources

UTC = dt.UTC
DAY1 = dt.datetime(2026, 6, 1, tzinfo=UTC)
DAY2 = dt.datetime(2026, 6, 2, tzinfo=UTC)
HEADER = "survey_id,ticket_id,submitted_at,csat,nps,complaint,comment\n"


@pytest.fixture
def memory_root():
    root = f"memory://drops-{uuid.uuid4().hex[:8]}"
    yield root
    fs, path = fsspec.core.url_to_fs(root)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _source(monkeypatch, tmp_path, folder: str):
    path = tmp_path / "sources.yml"
    path.write_text(
        "sources:\n  url_drop:\n    kind: file_drop\n"
        f"    folder: '{folder}'\n    prefix: surveys\n    settle: 1s\n    entities: {{surveys: {{}}}}\n"
    )
    source = load_sources(path)["url_drop"]
    monkeypatch.setitem(SOURCES, "url_drop", source)
    return source


def _ingest(url: str, end: dt.datetime):
    with contextlib.closing(psycopg2.connect(url)) as conn:
        result = ingest_batch(conn, "url_drop", "surveys", end - dt.timedelta(days=1), end)
        conn.commit()
    return result


def test_a_memory_url_drop_loads_each_file_once_and_keeps_its_rules(fresh_db, monkeypatch, tmp_path, memory_root):
    source = _source(monkeypatch, tmp_path, f"{memory_root}/surveys")
    fs, root = fsspec.core.url_to_fs(source.folder)
    day1 = (
        HEADER + "S-1,HD-1,2026-06-01T10:00:00+00:00,5,9,false,非常好\nS-2,HD-2,2026-06-01T11:00:00+00:00,9,3,true,\n"
    )
    fs.pipe(f"{root}/surveys_20260601.csv", day1.encode("gbk"))
    fs.pipe(f"{root}/.surveys_20260601.csv.part", b"half a file")
    first = _ingest(fresh_db, DAY2)
    # Both rows are read (the ticket of neither is known: held); the 9 is out of range.
    assert first.rows_read == 2 == first.rows_loaded + first.rows_quarantined
    assert first.quarantine_reasons.get("csat_in_range") == 1
    with contextlib.closing(psycopg2.connect(fresh_db)) as conn, conn.cursor() as cur:
        cur.execute("select record ->> 'comment', origin from quarantine.url_drop__surveys order by 2")
        assert cur.fetchall()[0] == ("非常好", "surveys_20260601.csv:2"), "GBK decoded, origin file:line"
        cur.execute("select file_name, encodings from ops.drop_manifest where source = 'url_drop'")
        assert cur.fetchall() == [("surveys_20260601.csv", ["GB18030"])]
    # The same content again under the next day's name: recorded as a duplicate, not loaded.
    fs.pipe(f"{root}/surveys_20260602.csv", day1.encode("gbk"))
    second = _ingest(fresh_db, DAY2 + dt.timedelta(days=1))
    assert second.rows_read == 0
    assert _ingest(fresh_db, DAY2).rows_read == 2, "a rerun of the batch that loaded the file loads it again"


def test_a_file_still_being_written_waits_on_a_url_drop_as_on_a_folder(memory_root, tmp_path):
    for folder in (f"{memory_root}/w", f"file://{tmp_path}/w"):
        fs, root = fsspec.core.url_to_fs(folder)
        fs.makedirs(root, exist_ok=True)
        fs.pipe(f"{root}/surveys_20260601.csv", (HEADER + "S-1,HD-1,2026-06-01T10:00:00+00:00,5,9,false,\n").encode())

        def keep_writing(path=f"{root}/surveys_20260601.csv", fs=fs):
            time.sleep(0.3)
            with fs.open(path, "ab") as fh:
                fh.write(b"S-2,HD-2,2026-06-01T11:00:00+00:00,4,8,false,\n")

        writer = threading.Thread(target=keep_writing)
        writer.start()
        assert drop_files(folder, "surveys", None, DAY2, settle=dt.timedelta(seconds=1)) == [], folder
        writer.join()
        time.sleep(1.1)
        settled = drop_files(folder, "surveys", None, DAY2, settle=dt.timedelta(seconds=1))
        assert [f.name for f in settled] == ["surveys_20260601.csv"], folder


def test_a_servicenow_export_is_read_from_an_fsspec_url(memory_root):
    url = f"{memory_root}/exports/incidents.csv"
    fs, path = fsspec.core.url_to_fs(url)
    fs.pipe(path, SAMPLE.read_bytes())
    settings = Settings.of(SOURCES["servicenow_export"])
    remote, local = parse_export(url, settings), parse_export(str(SAMPLE), settings)
    assert (
        (remote.rows, remote.incidents, remote.rejected)
        == (local.rows, local.incidents, local.rejected)
        == (176, 28, 6)
    )
    assert [t[0] for t in remote.tickets] == [t[0] for t in local.tickets]
    assert {o.split(":")[0] for _, o, _ in remote.tickets} == {"incidents.csv"}
