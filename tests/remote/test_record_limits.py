"""A job's records read from its run directory are read within bounds: a line of no newline, or
of millions of values, is refused naming the file, in the calling cell."""

import tracemalloc

import pytest

import lmwidget
from lmwidget.remote import recorded
from lmwidget.remote.transport.channel import SCHEME, new_key, write_connection_file
from lmwidget.remote.rundir import CONNECTION, RECORDS


def ended_job(run_dir, records: bytes):
    run_dir.mkdir()
    write_connection_file(run_dir / CONNECTION, {"ip": "127.0.0.1", "metrics_port": 1, "control_port": 2,
                                                 "key": new_key(), "signature_scheme": SCHEME, "ended": True,
                                                 "run_dir": str(run_dir)})
    (run_dir / RECORDS).write_bytes(records)


@pytest.mark.parametrize("line", ["no newline", "millions of values"])
def test_a_records_file_with_a_line_past_the_bounds_is_refused_naming_it(tmp_path, line):
    records = (b"x" * (recorded.RECORD_LINE + 10) if line == "no newline"
               else b"[" + b"0," * (recorded.RECORD_ITEMS + 1) + b"0]\n")
    ended_job(tmp_path / "run", records)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as info:
            lmwidget.attach(tmp_path / "run", display=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(tmp_path / "run" / RECORDS) in str(info.value)
    assert "it was not parsed; expected the records a job writes, one JSON object a line" in str(info.value)
    assert peak < 3 * recorded.RECORD_LINE, peak  # one line at most, never the file, never a parse
