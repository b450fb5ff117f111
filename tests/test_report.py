"""The ablation report from made-up results (nothing trained): tables from metric specs, per-example
instability, seeds needed, and the --detect / --correlation flags."""

import json

import numpy as np
import pytest

from jaxseed import ablate, rundir, stats, streams

LABELS = np.array([0, 1, 2, 0, 1, 2])
# Which of the 6 test examples each run gets right, per group of K = 3 runs.
CORRECT = {"init": [[1, 1, 1, 0, 0, 1], [1, 1, 0, 0, 1, 1], [1, 0, 1, 0, 0, 1]],  # unstable: 1, 2, 4
           "shuffle": [[1, 1, 1, 0, 0, 0], [1, 0, 1, 0, 0, 1], [1, 1, 1, 0, 0, 1]],  # unstable: 1, 5
           "none": [[1, 1, 1, 0, 0, 1]] * 3}


def run(right, k, loss):
    """A run whose test probabilities put 0.8 on the label where ``right``, else on the next class."""
    predicted = np.where(right, LABELS, (LABELS + 1) % 3)
    probabilities = np.full((6, 3), 0.1)
    probabilities[np.arange(6), predicted] = 0.8
    return {"seeds": {name: k for name in streams.STREAMS}, "param_hash": str(k), "probabilities": probabilities,
            "final": {"test_loss": loss, "test_accuracy": float(np.mean(right))}}


def groups(losses=(0.5, 0.7, 0.6)):
    return {name: [run(np.array(right, bool), k, losses[k] if name != "none" else 0.5)
                   for k, right in enumerate(runs)] for name, runs in CORRECT.items()}


def report(folder, results, labels=LABELS, **options):
    rows = [ablate.summarize(name, group, labels) for name, group in results.items()]
    with rundir.RunFolder.claim(str(folder), "study", resume=True) as study:
        markdown = ablate.write_report(study, rows, results, {}, labels=labels, **options)
    return markdown, json.loads((folder / "ablation.json").read_text())


def test_instability_in_table_and_summary(tmp_path):
    markdown, stored = report(tmp_path, groups(), labels=LABELS)
    summary = {row["group"]: row for row in stored["summary"]}
    for name, right in CORRECT.items():
        found = stats.instability(np.array(right, bool))
        assert [summary[name][key] for key in found._fields] == pytest.approx(list(found))
    assert (summary["init"]["always_right"], summary["init"]["always_wrong"], summary["init"]["unstable"]) == (2, 1, 3)
    assert "| init | 3 | 2 | 1 | 3 | " in markdown and "| none | 3 | 4 | 2 | 0 | 0.0000 | 0.0000 [0.0000, 0.0000] |" \
        in markdown
    # init's unstable {1, 2, 4} and shuffle's {1, 5}: 1 shared of 4; none is no varied group
    assert stored["unstable_overlap"] == [{"groups": ["init", "shuffle"], "both": 1, "jaccard": 0.25,
                                           "jaccard_if_independent": pytest.approx(1 / 4)}]
    assert "| init & shuffle | 1 | 0.250 | 0.250 |" in markdown
    assert not (tmp_path / "unstable.png").exists()  # no test images given


def test_without_labels_no_overlap_but_the_old_call_still_works(tmp_path):
    results = groups()
    rows = [ablate.summarize(name, group, LABELS) for name, group in results.items()]
    with rundir.RunFolder.claim(str(tmp_path), "study", resume=True) as study:
        markdown = ablate.write_report(study, rows, results, {})
    assert "### Per-example instability" in markdown and "Jaccard" not in markdown
    assert json.loads((tmp_path / "ablation.json").read_text())["unstable_overlap"] == []


@pytest.mark.parametrize("channels", [1, 3])
def test_unstable_picture_from_test_images(tmp_path, channels):
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, channels), dtype=np.uint8)
    markdown, _ = report(tmp_path, groups(), labels=LABELS, test_images=images)
    assert "![up to 8 test images per group with p_i nearest 1/2](unstable.png)" in markdown
    assert (tmp_path / "unstable.png").stat().st_size > 1000
    stable = {name: [run(np.ones(6, bool), k, 0.5 + k / 10) for k in range(3)] for name in ("init", "none")}
    markdown, _ = report(tmp_path / "stable", stable, labels=LABELS, test_images=images)
    assert "No group has an unstable test example: no unstable.png." in markdown
    assert not (tmp_path / "stable" / "unstable.png").exists()


def test_seeds_needed_at_the_std_and_its_interval_ends(tmp_path):
    markdown, stored = report(tmp_path, groups(), detect=0.05, correlation=0.5)
    plan = stored["seeds_needed"]
    assert (plan["metric"], plan["difference"], plan["correlation"], plan["designs"]) == (
        "test_accuracy", 0.05, 0.5, ["unpaired", "paired"])
    assert list(plan["groups"]) == ["init", "shuffle"]  # never the determinism control
    row = next(row for row in stored["summary"] if row["group"] == "init")
    spreads = [row["test_accuracy_std"], *row["test_accuracy_std_ci"]]
    init = plan["groups"]["init"]
    assert init["seeds_unpaired"] == [stats.seeds_needed(0.05, s) for s in spreads]
    assert init["seeds_paired"] == [stats.seeds_needed(0.05, s, 0.5) for s in spreads]
    assert init["detectable_paired"] == pytest.approx([stats.detectable_difference(s, 3, 0.5) for s in spreads])
    assert init["seeds_unpaired"][1] < init["seeds_unpaired"][0] < init["seeds_unpaired"][2]
    n, low, high = init["seeds_unpaired"]
    assert f"| {n} [{low}, {high}] |" in markdown
    assert "seeds per configuration for Δ = 0.05, paired (r = 0.5)" in markdown


def test_seeds_section_without_flags_and_for_a_loss_only_model(tmp_path):
    """A VAE's rows hold only its test loss: every table is built from that, and no per-example section."""
    results = {name: [{"seeds": {}, "param_hash": str(k), "final": {"test_loss": loss}}
                      for k, loss in enumerate(losses)]
               for name, losses in (("latent", [106.1, 106.5, 106.3]), ("none", [106.2] * 3))}
    markdown, stored = report(tmp_path, results, labels=None)
    assert markdown.splitlines()[0] == "| group | runs | test loss: mean [95% t CI] | test loss: std [95% χ² CI] |"
    assert "### Per-example" not in markdown and "disagreement" not in markdown and "for Δ =" not in markdown
    assert "| group | runs | test loss: std [95% χ² CI] | smallest Δ at this K, unpaired |" in markdown
    assert stored["seeds_needed"]["metric"] == "test_loss"
    assert stored["seeds_needed"]["groups"]["latent"]["detectable_unpaired"][0] == pytest.approx(
        stats.detectable_difference(0.2, 3))


def test_a_seed_count_beyond_the_limit_is_null_in_json(tmp_path):
    results = groups(losses=(0.5, 0.7, 0.6))
    markdown, stored = report(tmp_path, results, detect=1e-7)
    assert stored["seeds_needed"]["groups"]["init"]["seeds_unpaired"] == [None, None, None]
    assert f"> {stats.MAX_SEEDS:,} [> {stats.MAX_SEEDS:,}, > {stats.MAX_SEEDS:,}]" in markdown


SWEEP = ["--data", "synthetic", "--seeds", "2"]


@pytest.mark.parametrize("flags, message", [(["--detect", "0"], "must be > 0"), (["--detect", "-1"], "must be > 0"),
                                            (["--detect", "inf"], "must be > 0"), (["--detect", "x"], "a number"),
                                            (["--correlation", "1"], "in [-1, 1)"),
                                            (["--correlation", "-1.5"], "in [-1, 1)")])
def test_bad_detect_or_correlation_is_one_line(flags, message, capsys):
    with pytest.raises(SystemExit) as exited:
        ablate.ablate_parser().parse_args([*SWEEP, *flags])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error and flags[0] in error


def test_detect_and_correlation_parse():
    args = ablate.ablate_parser().parse_args([*SWEEP, "--detect", "0.001", "--correlation", "0.84"])
    assert (args.detect, args.correlation) == (0.001, 0.84)
    args = ablate.ablate_parser().parse_args(SWEEP)
    assert (args.detect, args.correlation) == (None, None)
