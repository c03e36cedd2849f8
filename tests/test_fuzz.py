"""The API fuzzed from its own OpenAPI description: no 500s, only the documented statuses, bodies as described."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

pytestmark = pytest.mark.slow

# No schema can say "these base64 bytes are a song": schema-valid uploads of random bytes are rightly refused (415),
# so the check that schema-valid requests are accepted is left out; every other check runs.
EXCLUDED = [positive_data_acceptance]


def test_the_api_keeps_to_its_description_under_fuzzing(live_app):
    schema = schemathesis.openapi.from_url(f"{live_app.url}/apiv1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def keeps_to_the_description(case):
            case.call_and_validate(excluded_checks=EXCLUDED)

        keeps_to_the_description()
