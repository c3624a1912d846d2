"""`bench ycsb --migrate-at / --migrate-out-at`: the storage servers move in the middle of a
small YCSB run, whose results and database check are those of a run without."""

from __future__ import annotations

import pytest

from underbridge.bench import ycsb
from underbridge.errors import UserError

RECORDS, OPS, AT = 20, 20, 10


@pytest.fixture(scope="module")
def plain():
    return ycsb.run("underbridge", RECORDS, OPS)


@pytest.mark.parametrize(("option", "order"), [("migrate_at", "in"), ("migrate_out_at", "out")])
def test_a_run_with_a_migration_gives_the_same_results(plain, option, order):
    result = ycsb.run("underbridge", RECORDS, OPS, **{option: AT})
    assert result.summary == plain.summary  # and equal to the native twin's (run checks)
    assert result.fs_check == []
    migration = result.migration
    assert migration is not None
    assert (migration["direction"], migration["at"]) == (order, AT)
    assert migration["ops_before"] == AT
    assert 0 < migration["ops_after"] <= OPS - AT
    assert migration["sim_ops_per_sec_before"] > 0 < migration["sim_ops_per_sec_after"]
    moved = [(m["group"], m["direction"]) for m in migration["migrations"]]
    servers = ["ramdisk", "fs"] if order == "in" else ["fs", "ramdisk"]
    assert moved == [(name, order) for name in servers]
    assert all(m["cycles"] > 0 for m in migration["migrations"])
    assert "migration" in result.to_json()


def test_a_run_without_a_migration_reports_none(plain):
    assert plain.migration is None
    assert "migration" not in plain.to_json()


@pytest.mark.parametrize(
    ("mode", "kwargs", "message"),
    [
        ("sel4", {"migrate_at": 1}, "the sel4 design cannot move servers"),
        ("underbridge", {"migrate_at": 1, "migrate_out_at": 1}, "exclude each other"),
        ("underbridge", {"migrate_at": OPS}, "after 0 to 19 operations"),
    ],
)
def test_bad_migration_options_are_user_errors(mode, kwargs, message):
    with pytest.raises(UserError, match=message):
        ycsb.run(mode, RECORDS, OPS, **kwargs)
