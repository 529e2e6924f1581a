"""The one exception <-> gRPC status table (`service.errors.STATUS_CODES`)."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

from service import errors
from service.errors import (
    KINDS,
    STATUS_CODES,
    Internal,
    InvalidArgument,
    PriorlabError,
    error_for,
    status_name,
)


def _subclasses(kind: type[PriorlabError]) -> list[type[PriorlabError]]:
    return [sub for direct in kind.__subclasses__() for sub in (direct, *_subclasses(direct))]


def test_every_kind_has_exactly_one_code_and_every_code_one_kind() -> None:
    declared = {
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, PriorlabError) and value is not PriorlabError
    }
    assert set(STATUS_CODES) == declared  # a new kind without a row fails here
    assert len(set(STATUS_CODES.values())) == len(STATUS_CODES)  # so the table reads both ways
    assert {name: kind for kind, name in STATUS_CODES.items()} == dict(KINDS)
    for kind, name in STATUS_CODES.items():
        assert grpc.StatusCode[name] is not grpc.StatusCode.OK  # a real status code, and a failure
        assert status_name(kind("m")) == name
        again = error_for(name, "m")
        assert type(again) is kind and again.message == "m"


def test_a_subclass_of_a_kind_is_that_kind_and_the_bare_base_is_internal() -> None:
    class BadHint(InvalidArgument):
        pass

    assert BadHint in _subclasses(PriorlabError)
    assert status_name(BadHint("m")) == "INVALID_ARGUMENT"
    assert status_name(PriorlabError("m")) == "INTERNAL"


@pytest.mark.parametrize("name", ["UNKNOWN", "FAILED_PRECONDITION", "NOT_A_CODE", ""])
def test_a_code_no_kind_owns_is_internal(name: str) -> None:
    error = error_for(name, "from a newer worker")
    assert type(error) is Internal and str(error) == "from a newer worker"


def test_the_table_does_not_load_grpc() -> None:
    # Training imports service.errors through the colour maths; it should not pay for grpc.
    probe = "import sys, service.errors; print('grpc' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
