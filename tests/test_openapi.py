"""The OpenAPI description matches the app's routes and is a valid OpenAPI 3.1 document."""

import re

import requests
from openapi_spec_validator import validate

from msaas.rest.openapi import spec


def test_the_spec_is_served_and_valid(live_app):
    served = requests.get(f"{live_app.url}/apiv1/openapi.json", timeout=5).json()
    assert served == spec()
    validate(served)


def test_every_route_is_described_and_every_description_is_a_route(live_app):
    routes = set()
    for rule in live_app.app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routes.add((path, method.lower()))
    described = {(path, method) for path, item in spec()["paths"].items() for method in item}
    assert routes == described
