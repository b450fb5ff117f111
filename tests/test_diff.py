"""jaxseed.diff: the first step where two traced runs part."""

from jaxseed import diff, train


def test_first_difference_at_a_known_step():
    trace = [{"step": s, "epoch": 1 + s // 4, "loss": 1.0 / (s + 1), "param_checksum": s} for s in range(10)]
    changed = [dict(row) for row in trace]
    changed[6]["param_checksum"] = 99
    changed[8]["loss"] = 0.0
    assert diff.first_difference(trace, trace) is None
    found = diff.first_difference(trace, changed)
    assert (found["step"], found["epoch"]) == (6, 2)
    assert diff.first_difference(trace, trace[:7])["step"] == 7  # B stopped early


def test_diff_cli_on_traced_runs(tmp_path):
    def run(name, *extra):
        assert train.main(["--data", "synthetic", "--train-limit", "256", "--batch-size", "64", "--epochs", "1",
                           "--steps-per-call", "4", "--trace", "--quiet", "--workdir", str(tmp_path / name),
                           *extra]) == 0

    run("a")
    run("b")
    run("c", "--stream", "shuffle=5")
    same = diff.main([str(tmp_path / "a"), str(tmp_path / "b")])
    assert same == 0
    assert diff.main([str(tmp_path / "a"), str(tmp_path / "c")]) == 1
    assert len((tmp_path / "a" / "trace.jsonl").read_text().splitlines()) == 4
    assert diff.main([str(tmp_path / "a"), str(tmp_path)]) == 2  # not a traced run
