import io
import itertools

import pytest
from shop import audit

ids = itertools.count(20_000)


@pytest.fixture
def sink():
    return io.StringIO()


@pytest.mark.no_leaks
def test_log_request():
    audit.log_request(next(ids), "/cart")


@pytest.mark.no_leaks
def test_deprecated_helper_warns_every_call():
    with pytest.deprecated_call():
        assert audit.legacy_discount(100.0) == 95.0


@pytest.mark.no_leaks
def test_deprecated_helper_warning_recorded_by_pytest():
    assert audit.legacy_discount(200.0) == 190.0


@pytest.mark.no_leaks
def test_trace_with_scoped_handler(sink):
    audit.trace_request_scoped(next(ids), sink)
    sink.seek(0)
    sink.truncate()


@pytest.mark.no_leaks
def test_logger_per_request():
    audit.handle_with_request_logger(next(ids))


@pytest.mark.no_leaks
def test_handler_added_per_call(sink):
    audit.trace_request(next(ids), sink)
    sink.seek(0)
    sink.truncate()


@pytest.mark.no_leaks
def test_audit_trail():
    audit.audit("alice", "checkout", next(ids))
