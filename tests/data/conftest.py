"""Fixtures of the data tests."""

import pytest
from datahelpers import MediaServer


@pytest.fixture
def media_server(tmp_path):
    server = MediaServer(tmp_path / "served")
    server.root.mkdir()
    server.thread.start()
    yield server
    server.release.set()
    server.httpd.shutdown()
    server.httpd.server_close()
