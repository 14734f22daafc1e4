import itertools

import pytest
from shop import files

ids = itertools.count(110_000)


@pytest.mark.no_leaks
def test_export_line_closed(tmp_path):
    files.append_export_line_closed(str(tmp_path), "acme", f"order,{next(ids)}")


@pytest.mark.no_leaks
def test_spool_upload():
    assert files.spool_upload(b"x" * 10_000) == 10_000


@pytest.mark.no_leaks
def test_file_handle_per_call(tmp_path):
    files.append_export_line(str(tmp_path), "acme", f"order,{next(ids)}")
