"""Schema fuzzing with schemathesis against the app's own OpenAPI: no 500s, no response off its schema."""

import os
import secrets
import tempfile

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from service.main import create_app
from service.settings import Settings
from tests.conftest import ARTIFACTS

# small bodies keep the fuzzing inside a minute; the limits themselves are tested in test_service.py. The job
# endpoints are on (an unguessable token, a throw-away queue, no consumer), so that their missing or wrong
# Authorization gets the 401 the schema promises (off, they answer 403 whatever is sent: tests/test_jobs.py)
app = create_app(
    Settings(
        artifacts_dir=ARTIFACTS,
        max_total_samples=20_000,
        max_batch=50,
        cross_check_samples=100,
        admin_token=secrets.token_urlsafe(32),
        queue=f"sqlite:///{tempfile.mkdtemp(prefix='fuzz-queue-')}/queue.sqlite3",
        embedded_worker=False,
    )
)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schemathesis.check
def valid_data_is_accepted_within_the_limits(ctx, response, case) -> None:
    """schemathesis' positive_data_acceptance, except for the limits set from the environment.

    A schema-valid body may still exceed one (len(y) x num_samples x
    objectives cannot be written in JSON Schema): then, and only then, a 422
    that names the limit's setting. A random pinned version is not served:
    a 409 that says so (or a 422 when one version is given for "both").
    And an integral float where an integer is expected (seed, num_samples).
    """
    if response.status_code == 422 and "AMORTIZED_MAX_" in response.text:
        return
    # a random pinned version: the 409 names the served ones
    if response.status_code == 409 and "is not served" in response.text:
        return
    if response.status_code == 422 and 'with objective "both", pin each network' in response.text:
        return
    # 378057.0 for an integer: refused (strict), which JSON Schema's "integer" cannot say (it counts integral floats
    # as integers)
    if response.status_code == 422 and '"type":"int_type"' in response.text:
        return
    positive_data_acceptance(ctx, response, case)


# Examples per operation: the suite's run keeps to about a minute on 2 cores; bench/fuzz.py runs the long search
# (2500 per operation, as the suite did before it outgrew its time), or any count, through the same test.
EXAMPLES = int(os.environ.get("AMORTIZED_FUZZ_EXAMPLES", "600"))


@schema.exclude(tag="jobs").parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_never_fails_and_keeps_its_schema(case):
    case.call_and_validate(
        excluded_checks=[positive_data_acceptance], additional_checks=[valid_data_is_accepted_within_the_limits]
    )


# The job endpoints answer 401 to anything without the token, cheaply, but generating 2500 arbitrary spec bodies
# costs ~40 s per operation: fewer examples there (their contract is tested in tests/test_jobs.py)
@schema.include(tag="jobs").parametrize()
@settings(max_examples=min(EXAMPLES, 150), deadline=None, suppress_health_check=list(HealthCheck))
def test_the_job_endpoints_never_fail_and_keep_their_schema(case):
    case.call_and_validate(
        excluded_checks=[positive_data_acceptance], additional_checks=[valid_data_is_accepted_within_the_limits]
    )
