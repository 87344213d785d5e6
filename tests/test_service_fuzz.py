"""Schema fuzzing with schemathesis against the app's own OpenAPI: no 500s, no response off its schema."""

import schemathesis
from hypothesis import HealthCheck, settings

from service.main import create_app
from service.settings import Settings
from tests.conftest import ARTIFACTS

# small bodies keep the fuzzing inside a minute; the limits themselves are tested in test_service.py
app = create_app(Settings(artifacts_dir=ARTIFACTS, max_total_samples=20_000, max_batch=50))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=2500, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_never_fails_and_keeps_its_schema(case):
    case.call_and_validate()
