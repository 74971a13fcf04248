"""A run whose method code changed while it ran says so in its provenance."""

import suite.provenance as prov


def test_code_changed_midway_is_recorded(edited_code):
    """Mutation caught: taking the end hash from the cached start value (`code_version`) instead of
    reading the code again (`code_hash_now`): the edit would go unnoticed."""
    prov.git_state.cache_clear()
    start = prov.start_stamp(("mta", "suite"))
    same = prov.provenance({}, {}, None, ("mta", "suite"))
    assert same["code_changed"] is False and same["code_version"] == start["code_version"]
    edited_code("memgas/router.py")  # another method's code: not this run's
    assert prov.provenance({}, {}, None, ("mta", "suite"))["code_changed"] is False
    # an edit of the run's own code after its start (code_version stays cached at the start value)
    root = prov.project_root()
    with open(root / "mta" / "merge.py", "a") as f:
        f.write("\n# edited while the run ran\n")
    p = prov.provenance({}, {}, None, ("mta", "suite"))
    assert p["code_changed"] is True and p["code_version"] == start["code_version"] != p["code_version_end"]
    assert "changed while the run ran" in p["code_note"]


def test_wall_time_counts_from_the_start_not_from_the_summary(monkeypatch):
    """Mutation caught: timing from inside `provenance` (or re-reading the start each call): a run
    that took 100 s would claim about 0 s in docs/reproducing.md's cost column."""
    prov._started.cache_clear()
    clock = iter([1000.0, 1100.0])
    monkeypatch.setattr(prov.time, "monotonic", lambda: next(clock))
    start = prov.start_stamp(("mta", "suite"))
    p = prov.provenance({}, {}, None, ("mta", "suite"))
    assert p["wall_s"] == 100.0 and p["started_at"] == start["started_at"] <= p["finished_at"]
    prov._started.cache_clear()
