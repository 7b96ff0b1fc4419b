"""provider.file on its own: files, folders, and files with mistakes."""

from __future__ import annotations

import logging
import threading
import time

from interlook_ext.base import ServiceFeed
from interlook_ext.file_provider import FileProvider, FileProviderSettings
from tests.support import wait_until


class RecordingFeed(ServiceFeed):
    def __init__(self):
        super().__init__()
        self.snapshots = []

    def snapshot(self, services):
        self.snapshots.append({s.name: s for s in services})


def replace(path, text):
    """Save a file as editors do, by rename: a reader never sees it half-written."""
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text)
    temp.replace(path)


def watching(path):
    provider = FileProvider(
        "provider.file", FileProviderSettings(path=str(path), pollInterval="50ms")
    )
    feed = RecordingFeed()
    thread = threading.Thread(target=provider.watch, args=(feed,), daemon=True)
    thread.start()
    return feed, thread


GOOD = """services:
  - name: web
    targets: [{host: 10.0.0.5, port: 8080}]
    dns_names: [web.example.test]
"""


def test_changes_and_removals_are_reported(tmp_path):
    path = tmp_path / "services.yml"
    path.write_text(GOOD)
    feed, thread = watching(path)
    try:
        wait_until(lambda: feed.snapshots and "web" in feed.snapshots[-1], 5)
        replace(path, GOOD.replace("8080", "8081"))
        wait_until(lambda: feed.snapshots[-1]["web"].targets[0].port == 8081, 5)
        replace(path, "services: []\n")
        wait_until(lambda: feed.snapshots[-1] == {}, 5)
    finally:
        feed.stopping.set()
        thread.join(5)


def test_a_broken_file_keeps_its_previous_services(tmp_path, caplog):
    path = tmp_path / "services.yml"
    path.write_text(GOOD)
    feed, thread = watching(path)
    caplog.set_level(logging.ERROR)
    try:
        wait_until(lambda: feed.snapshots, 5)
        count = len(feed.snapshots)
        replace(path, GOOD + "  - name: bad\n    targets: [{host: x, port: 0}]\n")
        wait_until(lambda: "BAD_FILE" in caplog.text, 5)
        replace(path, GOOD.replace("targets:", "targets: [oops\n"))
        wait_until(lambda: "not valid YAML" in caplog.text, 5)
        assert len(feed.snapshots) == count, "nothing new was reported"
        assert f"file={path}" in caplog.text and "line 5" in caplog.text
        assert "port" in caplog.text
        errors = [r for r in caplog.records if "BAD_FILE" in r.getMessage()]
        assert len(errors) == 2, "one line per problem, not one per scan"
    finally:
        feed.stopping.set()
        thread.join(5)


def test_a_folder_of_files(tmp_path):
    (tmp_path / "a.yml").write_text(GOOD)
    (tmp_path / "b.yml").write_text(GOOD.replace("web", "api"))
    (tmp_path / "notes.txt").write_text("not a services file")
    feed, thread = watching(tmp_path)
    try:
        wait_until(
            lambda: feed.snapshots and set(feed.snapshots[-1]) == {"web", "api"}, 5
        )
        (tmp_path / "b.yml").unlink()
        wait_until(lambda: set(feed.snapshots[-1]) == {"web"}, 5)
    finally:
        feed.stopping.set()
        thread.join(5)


def test_lookup_answers_from_the_files(tmp_path):
    path = tmp_path / "services.yml"
    path.write_text(GOOD)
    provider = FileProvider("provider.file", FileProviderSettings(path=str(path)))
    found = provider.lookup(["web", "gone"])
    assert found["gone"] is None and found["web"].dns_names == ("web.example.test",)


def test_no_snapshot_until_a_missing_or_broken_file_is_readable(tmp_path):
    path = tmp_path / "services.yml"
    feed, thread = watching(path)
    try:
        wait_until(lambda: thread.is_alive(), 1)
        path.write_text("")
        path.write_text("services: [oops\n")
        time.sleep(0.3)
        assert feed.snapshots == [], "nothing is known, so nothing may be deleted"
        replace(path, GOOD)
        wait_until(lambda: feed.snapshots and "web" in feed.snapshots[-1], 5)
    finally:
        feed.stopping.set()
        thread.join(5)


def test_an_empty_file_keeps_the_services(tmp_path, caplog):
    path = tmp_path / "services.yml"
    path.write_text(GOOD)
    feed, thread = watching(path)
    try:
        wait_until(lambda: feed.snapshots, 5)
        path.write_text("")
        wait_until(lambda: "the file is empty" in caplog.text, 5)
        assert "web" in feed.snapshots[-1]
    finally:
        feed.stopping.set()
        thread.join(5)


def test_lookup_cannot_answer_for_a_file_never_read(tmp_path):
    provider = FileProvider(
        "provider.file", FileProviderSettings(path=str(tmp_path / "absent.yml"))
    )
    assert provider.lookup(["web"]) is None


def test_a_broken_file_removed_before_it_was_read_no_longer_blocks(tmp_path):
    (tmp_path / "a.yml").write_text(GOOD)
    (tmp_path / "b.yml").write_text("services: [oops\n")
    feed, thread = watching(tmp_path)
    try:
        time.sleep(0.3)
        assert feed.snapshots == []
        (tmp_path / "b.yml").unlink()
        wait_until(lambda: feed.snapshots and set(feed.snapshots[-1]) == {"web"}, 5)
    finally:
        feed.stopping.set()
        thread.join(5)
