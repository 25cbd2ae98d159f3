"""Checks PagerDuty REST traffic against PagerDuty's own OpenAPI document.

The document is ``tests/reference/pagerduty/rest-api-v2/openapiv3.subset.json`` in the repository. If it is missing, :func:`spec_document` raises: conformance must fail loudly, never skip.

:class:`Conformance` is a validator for :class:`bot.runtime.simulators.pagerduty.PagerDutySimulator`: it sees
each request exactly as it arrived over the wire from the client, and each answer the simulator gave.

The document is used as published, except for these deliberate corrections (FACTS.md §2b, §9, §10):

* ``include[]``, ``statuses[]`` and ``urgencies[]`` are declared ``type: string`` with ``explode: true``,
  so a validator would check only the first of several repeated values. We declare them arrays of the
  same enum, so *every* value we repeat is checked.
* ``Oncall.start``, ``Oncall.end`` and ``Oncall.schedule`` are not nullable, although their own
  descriptions say null means a permanent on-call or a direct escalation target, and the API sends null.
* ``Oncall.user`` allows only a ``user_reference``, although ``include[]=users`` (which the client
  sends so it learns emails) expands it to a full ``User``. We accept either.
* Operations declare only some 4xx answers; PagerDuty documents 500 (and 408) with the same error body
  (docs ``14-Errors.md``). Each operation gets a ``default`` answer: that generic error body.
* ``Accept``, ``Content-Type`` and ``Authorization`` are listed as header parameters, which OpenAPI 3.0
  says tools SHALL ignore (openapi-core does). We check them by hand instead: the exact versioned
  ``Accept`` and ``Token token=`` format everywhere, and ``Content-Type: application/json`` whenever
  there is a body. The document also marks Content-Type required on GETs; a GET has no body to
  describe, so we do not require it there (FACTS.md §1 calls it a spec artifact).
* Query parameters the operation does not declare are errors (openapi-core ignores them), so a typo
  such as ``status[]`` cannot silently drop a filter.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from typing import Any

from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from werkzeug.datastructures import ImmutableMultiDict

from bot.runtime.simulators.pagerduty import RecordedRequest, RecordedResponse
from tests.fakes.reference import PAGERDUTY

SPEC_PATH = PAGERDUTY / "rest-api-v2/openapiv3.subset.json"
SERVER = "https://api.pagerduty.com"  # the document's server; the simulator's address stands in for it
ACCEPT = "application/vnd.pagerduty+json;version=2"
AUTHORIZATION = re.compile(r"Token token=\S+")
ERROR_RESPONSE = {"$ref": "#/components/responses/Conflict"}  # the generic {"error": {...}} body


class ConformanceError(AssertionError):
    """A request or response does not match PagerDuty's OpenAPI document."""


def spec_document() -> dict[str, Any]:
    if not SPEC_PATH.is_file():
        raise FileNotFoundError(
            f"PagerDuty's OpenAPI document is missing at {SPEC_PATH}. The conformance tests need the reference "
            "pack in tests/reference; restore it (git checkout tests/reference) rather than skipping these tests."
        )
    document: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
    return document


def corrected(document: dict[str, Any]) -> dict[str, Any]:
    """The document with the corrections listed in this module's docstring."""
    spec = copy.deepcopy(document)
    for param in spec["components"]["parameters"].values():
        schema = param.get("schema", {})
        if param.get("name", "").endswith("[]") and param.get("explode") and schema.get("type") == "string":
            item = {k: v for k, v in schema.items() if k != "uniqueItems"}
            param["schema"] = {"type": "array", "items": item, "uniqueItems": True}
    oncall = spec["components"]["schemas"]["Oncall"]["properties"]
    oncall["start"]["nullable"] = oncall["end"]["nullable"] = True
    oncall["schedule"]["oneOf"].append({"nullable": True, "enum": [None]})
    oncall["user"] = {"oneOf": [{"$ref": "#/components/schemas/UserReference"}, {"$ref": "#/components/schemas/User"}]}
    for path_item in spec["paths"].values():
        for method, operation in path_item.items():
            if method in {"get", "put", "post", "delete"}:
                operation["responses"].setdefault("default", ERROR_RESPONSE)
    return spec


def warm_up() -> None:
    """Compile the document now (once per process) rather than on the first validated request."""
    _spec()


@functools.cache
def _spec() -> tuple[OpenAPI, dict[str, Any]]:
    spec = corrected(spec_document())
    return OpenAPI.from_dict(spec), spec


def _operation(spec: dict[str, Any], method: str, path: str) -> tuple[str, dict[str, Any]]:
    """The document's path template and operation for a concrete path; literal segments win."""
    candidates = []
    for template, item in spec["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in item:
            candidates.append((template.count("{"), template))
    if not candidates:
        raise ConformanceError(f"{method} {path} is not an operation in PagerDuty's OpenAPI document")
    template = min(candidates)[1]
    return template, spec["paths"][template][method.lower()]


def _declared_query(spec: dict[str, Any], operation: dict[str, Any]) -> set[str]:
    names = set()
    for param in operation.get("parameters", []):
        if "$ref" in param:
            param = spec["components"]["parameters"][param["$ref"].rsplit("/", 1)[-1]]
        if param.get("in") == "query":
            names.add(param["name"])
    return names


def _mock_request(request: RecordedRequest) -> MockRequest:
    return MockRequest(
        SERVER,
        request.method,
        request.path,
        args=ImmutableMultiDict(list(request.query.items())),
        headers=dict(request.headers),
        data=request.body or None,
        content_type=request.headers.get("Content-Type", ""),
    )


def check_request(request: RecordedRequest) -> None:
    """Raise :class:`ConformanceError` unless the request is one PagerDuty's document allows."""
    openapi, spec = _spec()
    template, operation = _operation(spec, request.method, request.path)
    where = f"{request.method} {template}"
    problems = []
    if request.headers.get("Accept") != ACCEPT:
        problems.append(f"Accept must be {ACCEPT!r}, got {request.headers.get('Accept')!r}")
    if not AUTHORIZATION.fullmatch(request.headers.get("Authorization", "")):
        problems.append("Authorization must be 'Token token=<key>'")
    if request.body and not request.headers.get("Content-Type", "").startswith("application/json"):
        problems.append("a request with a body must say Content-Type: application/json")
    unknown = set(request.query) - _declared_query(spec, operation)
    if unknown:
        problems.append(f"undeclared query parameters {sorted(unknown)}")
    problems += [_describe(e) for e in openapi.iter_request_errors(_mock_request(request))]
    if problems:
        raise ConformanceError(f"{where} request: " + "; ".join(problems))


def check_response(request: RecordedRequest, response: RecordedResponse) -> None:
    """Raise :class:`ConformanceError` unless the answer matches the operation's declared responses."""
    openapi, spec = _spec()
    template, _ = _operation(spec, request.method, request.path)
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
    mock = MockResponse(response.body, status_code=response.status, headers=response.headers, content_type=content_type)
    problems = [_describe(e) for e in openapi.iter_response_errors(_mock_request(request), mock)]
    if problems:
        raise ConformanceError(f"{request.method} {template} answer {response.status}: " + "; ".join(problems))


def _describe(error: Exception) -> str:
    cause = error.__cause__
    details = getattr(cause, "schema_errors", None) or getattr(error, "schema_errors", None)
    if details:
        return f"{error!r}: " + ", ".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in details)
    return f"{error!r}" + (f" ({cause!r})" if cause else "")


class Conformance:
    """A simulator validator: checks each request and answer; remembers how many it checked."""

    def __init__(self) -> None:
        self.checked = 0

    def __call__(self, request: RecordedRequest, response: RecordedResponse) -> None:
        check_request(request)
        check_response(request, response)
        self.checked += 1
