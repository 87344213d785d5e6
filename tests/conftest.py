"""Shared fixtures: the committed artifacts, served in-process."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
EXAMPLES = ROOT / "examples" / "variants"


@pytest.fixture(scope="session")
def app():
    return create_app(Settings(artifacts_dir=ARTIFACTS))


@pytest.fixture(scope="session")
def client(app):
    with TestClient(app) as test_client:
        yield test_client
