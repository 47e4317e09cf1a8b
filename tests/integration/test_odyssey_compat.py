"""Odyssey configs as they are: where pooler used to behave differently from odyssey 1.5.3 on
the same config and clients (issue 18, "behaviour that differs from odyssey")."""

from __future__ import annotations

import pytest
from harness import PoolerStartError, make_config


def test_unopenable_log_file_is_one_error_line_naming_it(pooler):
    p = pooler(make_config(log_file="{workdir}/no/such/dir/pooler.log"), start=False)
    with pytest.raises(PoolerStartError) as failed:
        p.start()
    assert failed.value.returncode == 3  # a start-up failure (SPEC exit codes)
    log = failed.value.log
    assert "Traceback" not in log
    assert f"failed to open log file '{p.workdir}/no/such/dir/pooler.log'" in log
