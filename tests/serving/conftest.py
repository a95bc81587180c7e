"""Fixtures for the service tests; the helpers live in serving_testkit.py."""

import pytest
from fastapi.testclient import TestClient
from serving_testkit import FakeLoader, make_settings, wait_ready

from serving.app import create_app


@pytest.fixture
def loader() -> FakeLoader:
    return FakeLoader()


@pytest.fixture
def client(tmp_path, loader):
    """A ready TestClient on student + teacher fakes, default settings otherwise."""
    app = create_app(make_settings(tmp_path), loader=loader)
    with TestClient(app) as test_client:
        wait_ready(test_client)
        yield test_client
