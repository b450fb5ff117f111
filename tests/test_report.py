"""The study report, a pure function of made-up results (nothing trained, no folder): tables from
metric specs, per-example instability, seeds needed, the determinism control, and the --detect /
--correlation flags."""

import io
import json
import math

import matplotlib.image
import numpy as np
import pytest

from jaxseed import ablate, plots, rundir, streams
from jaxseed.study import report as study_report
from jaxseed.study.report import SPREAD
from jaxseed.study.result import Result

LABELS = np.array([0, 1, 2, 0, 1, 2])
# Which of the 6 test examples each run gets right, per group of K = 3 runs.
CORRECT = {"init": [[1, 1, 1, 0, 0, 1], [1, 1, 0, 0, 1, 1], [1, 0, 1, 0, 0, 1]],  # unstable: 1, 2, 4
           "shuffle": [[1, 1, 1, 0, 0, 0], [1, 0, 1, 0, 0, 1], [1, 1, 1, 0, 0, 1]],  # unstable: 1, 5
           "none": [[1, 1, 1, 0, 0, 1]] * 3}


# The noncentrality lambda* at which the two-sided 5% t test with nu degrees of freedom has 80% power
# (root of P(|T| > t_0.975,nu) = 0.8, T ~ t'_nu(lambda), by scipy's noncentral t and brentq).
LAMBDA_80 = {2: 5.653489266, 4: 3.761059554}


def run(right, k, loss):
    """A run whose test probabilities put 0.8 on the label where ``right``, else on the next class."""
    predicted = np.where(right, LABELS, (LABELS + 1) % 3)
    probabilities = np.full((6, 3), 0.1)
    probabilities[np.arange(6), predicted] = 0.8
    return Result({"test_loss": loss, "test_accuracy": float(np.mean(right))}, {"probabilities": probabilities},
                  str(k))


def groups(losses=(0.5, 0.7, 0.6)):
    return {name: [run(np.array(right, bool), k, losses[k] if name != "none" else 0.5)
                   for k, right in enumerate(runs)] for name, runs in CORRECT.items()}


def render(results, labels=LABELS, **options):
    """The report as ablate renders it (its metrics, its runs' param_hash)."""
    seeds = {name: [{stream: k for stream in streams.STREAMS} for k in range(len(group))]
             for name, group in results.items()}
    return study_report.render(results, seeds, {}, SPREAD, labels=labels, fingerprint="param_hash",
                               reruns="each its own program", **options)


def report(results, labels=LABELS, **options):
    found = render(results, labels, **options)
    return found.markdown, json.loads(json.dumps(found.record))  # as ablation.json holds it


def test_instability_in_table_and_summary():
    markdown, stored = report(groups(), labels=LABELS)
    summary = {row["group"]: row for row in stored["summary"]}
    # By hand from CORRECT: init's p = 1, 2/3, 2/3, 0, 1/3, 1, so sqrt(3/2 * 3 * 2/9) / 6 = 1/6;
    # shuffle's p = 1, 2/3, 1, 0, 0, 2/3: sqrt(3/2 * 2 * 2/9) / 6; none's runs agree: nothing flips.
    expected = {"init": (2, 1, 3, 1 / 6), "shuffle": (2, 2, 2, math.sqrt(2 / 3) / 6), "none": (4, 2, 0, 0.0)}
    for name, (right, wrong, unstable, flip_std) in expected.items():
        row = summary[name]
        assert (row["always_right"], row["always_wrong"], row["unstable"]) == (right, wrong, unstable), name
        assert row["independent_flip_std"] == pytest.approx(flip_std), name
    assert "| init | 3 | 2 | 1 | 3 | 0.1667 | " in markdown and "| shuffle | 3 | 2 | 2 | 2 | 0.1361 | " in markdown
    assert "| none | 3 | 4 | 2 | 0 | 0.0000 | 0.0000 [0.0000, 0.0000] |" in markdown
    # init's unstable {1, 2, 4} and shuffle's {1, 5}: 1 shared of 4; none is no varied group
    assert stored["unstable_overlap"] == [{"groups": ["init", "shuffle"], "both": 1, "jaccard": 0.25,
                                           "jaccard_if_independent": pytest.approx(1 / 4)}]
    assert "| init & shuffle | 1 | 0.250 | 0.250 |" in markdown
    assert list(render(groups()).pictures) == ["ablation.png"]  # no test images given: no unstable.png


def test_probabilities_without_labels_give_no_per_example_section():
    markdown, stored = report(groups(), labels=None)
    assert "### Per-example" not in markdown and "disagreement" not in markdown and "Jaccard" not in markdown
    assert stored["unstable_overlap"] == []


def test_correct_alone_gives_instability_but_no_disagreement():
    """A user's run returns which test examples it gets right: the instability table and overlaps,
    the same counts as from a classifier's probabilities, but no disagreement or ensemble accuracy."""
    results = {name: [Result(r.metrics, {"correct": np.array(right, bool)}, r.fingerprint)
                      for r, right in zip(group, CORRECT[name])] for name, group in groups().items()}
    markdown, stored = report(results, labels=None)
    from_probabilities = {row["group"]: row for row in report(groups())[1]["summary"]}
    for row in stored["summary"]:
        assert {k: row[k] for k in ("always_right", "always_wrong", "unstable")} == {
            k: from_probabilities[row["group"]][k] for k in ("always_right", "always_wrong", "unstable")}
        assert "disagreement" not in row and "ensemble_accuracy" not in row
    assert "| init & shuffle | 1 | 0.250 | 0.250 |" in markdown


@pytest.mark.parametrize("channels", [1, 3])
def test_unstable_picture_from_test_images(monkeypatch, channels):
    """What is drawn: each group with unstable examples, its images nearest p = 1/2 first (init's
    1, 2 and 4 are all 1/6 away: by index), titled with label and p; and a PNG that shows them."""
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, channels), dtype=np.uint8)
    drawn = []
    real = plots.plot_image_rows
    monkeypatch.setattr(plots, "plot_image_rows", lambda rows, out: (drawn.append(rows), real(rows, out)))
    found = render(groups(), labels=LABELS, test_images=images)
    assert "![up to 8 test images per group with p_i nearest 1/2](unstable.png)" in found.markdown
    png = io.BytesIO()
    found.pictures["unstable.png"](png)
    [rows] = drawn
    assert [(name, titles) for name, _, titles in rows] == [
        ("init", ["label 1, p = 0.67", "label 2, p = 0.67", "label 1, p = 0.33"]),
        ("shuffle", ["label 1, p = 0.67", "label 2, p = 0.67"])]
    np.testing.assert_array_equal(rows[0][1], images[[1, 2, 4]])
    np.testing.assert_array_equal(rows[1][1], images[[1, 5]])
    picture = matplotlib.image.imread(io.BytesIO(png.getvalue()))  # RGBA floats in [0, 1]
    assert picture.shape == (340, 500, 4)  # 2 rows of 3 columns: (1.5 * 3 + 0.5) x (1.7 * 2) inches at 100 dpi
    # The random images cover ~half of it (titles and labels alone: 2% of the pixels darker than 0.8).
    assert np.mean(picture[..., :3].min(-1) < 0.8) > 0.3
    stable = {name: [run(np.ones(6, bool), k, 0.5 + k / 10) for k in range(3)] for name in ("init", "none")}
    found = render(stable, labels=LABELS, test_images=images)
    assert "No group has an unstable test example: no unstable.png." in found.markdown
    assert "unstable.png" not in found.pictures


def test_seeds_needed_at_the_std_and_its_interval_ends():
    markdown, stored = report(groups(), detect=0.05, correlation=0.5)
    plan = stored["seeds_needed"]
    assert (plan["metric"], plan["difference"], plan["correlation"], plan["designs"]) == (
        "test_accuracy", 0.05, 0.5, ["unpaired", "paired"])
    assert list(plan["groups"]) == ["init", "shuffle"]  # never the determinism control
    # init's accuracies 4/6, 4/6, 3/6: s = sqrt(1/108); its chi-square interval at nu = 2, where
    # chi2.ppf(q, 2) = -2 ln(1 - q), is [s / sqrt(ln 40), s / sqrt(ln(40/39))].
    s = math.sqrt(1 / 108)
    spreads = [s, s / math.sqrt(math.log(40)), s / math.sqrt(math.log(40 / 39))]
    init = plan["groups"]["init"]
    assert [init["std"], *next(row for row in stored["summary"] if row["group"] == "init")["test_accuracy_std_ci"]] \
        == pytest.approx(spreads)
    # The fewest n with 80% power for 0.05 at each spread, by a search of n over scipy's noncentral t.
    assert init["seeds_unpaired"] == [60, 17, 2298] and init["seeds_paired"] == [32, 10, 1151]
    # Paired at r = 0.5, nu = 2: Delta = lambda* s / sqrt(3), lambda* = 5.65349 (80% power at nu = 2).
    assert init["detectable_paired"] == pytest.approx([LAMBDA_80[2] * spread / math.sqrt(3) for spread in spreads],
                                                      rel=1e-5)
    assert "| 60 [17, 2298] |" in markdown
    assert "seeds per configuration for Δ = 0.05, paired (r = 0.5)" in markdown


def test_seeds_section_without_flags_and_for_a_loss_only_model():
    """A VAE's rows hold only its test loss: every table is built from that, and no per-example section."""
    results = {name: [Result({"test_loss": loss}, {}, str(k)) for k, loss in enumerate(losses)]
               for name, losses in (("latent", [106.1, 106.5, 106.3]), ("none", [106.2] * 3))}
    markdown, stored = report(results, labels=None)
    assert markdown.splitlines()[0] == "| group | runs | test loss: mean [95% t CI] | test loss: std [95% χ² CI] |"
    assert "### Per-example" not in markdown and "disagreement" not in markdown and "for Δ =" not in markdown
    assert "| group | runs | test loss: std [95% χ² CI] | smallest Δ at this K, unpaired |" in markdown
    assert stored["seeds_needed"]["metric"] == "test_loss"
    # s = 0.2, unpaired at K = 3 (nu = 4): Delta = lambda* 0.2 sqrt(2) / sqrt(3).
    assert stored["seeds_needed"]["groups"]["latent"]["detectable_unpaired"][0] == pytest.approx(
        LAMBDA_80[4] * 0.2 * math.sqrt(2 / 3), rel=1e-5)


def test_a_seed_count_beyond_the_limit_is_null_in_json():
    results = groups(losses=(0.5, 0.7, 0.6))
    markdown, stored = report(results, detect=1e-7)
    assert stored["seeds_needed"]["groups"]["init"]["seeds_unpaired"] == [None, None, None]
    assert "> 1,000,000 [> 1,000,000, > 1,000,000]" in markdown


def test_determinism_line_from_the_none_group():
    """Bit-identical reruns (one fingerprint, zero spread); a spread or a second fingerprint is a loud
    warning; without fingerprints only the spread is judged, and the line says so."""
    same = {"init": [Result({"loss": v}, {}, str(v)) for v in (1.0, 2.0)],
            "none": [Result({"loss": 1.0}, {}, "a")] * 2}
    assert "are bit-identical (one fingerprint, zero spread)" in study_report.render(same, SEEDS2, {}).markdown
    other_bits = {**same, "none": [Result({"loss": 1.0}, {}, "a"), Result({"loss": 1.0}, {}, "b")]}
    assert "**WARNING: the `none` group" in study_report.render(other_bits, SEEDS2, {}).markdown
    spread = {**same, "none": [Result({"loss": 1.0}, {}, "a"), Result({"loss": 1.5}, {}, "a")]}
    assert "**WARNING: the `none` group" in study_report.render(spread, SEEDS2, {}).markdown
    unmarked = {name: [Result(r.metrics) for r in group] for name, group in same.items()}
    text = study_report.render(unmarked, SEEDS2, {}).markdown
    assert "have zero spread in every metric (no fingerprint was returned, so bitwise identity is not checked)" in text
    spread = {**unmarked, "none": [Result({"loss": 1.0}), Result({"loss": 1.5})]}
    assert "**WARNING" in study_report.render(spread, SEEDS2, {}).markdown


SEEDS2 = {"init": [{"init": 1}, {"init": 2}], "none": [{"init": 0}] * 2}


def test_the_report_of_any_metrics_in_their_order():
    """A user's metrics, in the order the runs return them, each with mean and std; the first one
    sizes the seeds-needed section."""
    results = {"init": [Result({"perplexity": p, "bleu": b}) for p, b in ((10.0, 0.3), (12.0, 0.2))],
               "none": [Result({"perplexity": 11.0, "bleu": 0.25})] * 2}
    found = study_report.render(results, SEEDS2, {})
    assert found.markdown.splitlines()[0] == (
        "| group | runs | perplexity: mean [95% t CI] | perplexity: std [95% χ² CI] | bleu: mean [95% t CI] "
        "| bleu: std [95% χ² CI] |")
    assert found.record["seeds_needed"]["metric"] == "perplexity"
    assert found.record["runs"]["init"][1] == {"seeds": {"init": 2}, "fingerprint": None,
                                               "final": {"perplexity": 12.0, "bleu": 0.2}}
    assert found.csv.splitlines()[0].startswith("group,runs,perplexity_mean,perplexity_std,")


def test_save_writes_every_file(tmp_path):
    found = render(groups(), labels=LABELS, test_images=np.zeros((6, 4, 4, 1), np.uint8))
    with rundir.RunFolder.claim(str(tmp_path), "study") as folder:
        study_report.save(folder, found)
    assert (tmp_path / "ablation.md").read_text() == found.markdown
    assert (tmp_path / "ablation.csv").read_bytes().decode() == found.csv
    assert json.loads((tmp_path / "ablation.json").read_text()) == json.loads(json.dumps(found.record))
    for name in ("ablation.png", "unstable.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
