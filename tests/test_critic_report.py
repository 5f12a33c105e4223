"""lab/critic_report.py's tables against numbers worked out by hand from made-up critic.py outputs:
2 seeds, 3 prompts, a pool of 4."""
import json

import pytest

from lab import critic_report
from runfiles import json_text

# per seed: {scorer: (best-of-2 per prompt, best-of-4 per prompt, AUC per prompt)}; prompt 2 has
# candidates all right or all wrong: no pair, AUC None
PER_PROMPT = [
    {"return[irl_s0/best]": ([0.5, 1.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.75, None]),
     "logp[mle_s0/best]": ([0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.5, 0.25, None]),
     "oracle": ([1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, None])},
    {"return[irl_s1/best]": ([0.0, 0.5, 1.0], [0.0, 1.0, 1.0], [0.0, 1.0, None]),
     "logp[mle_s1/best]": ([0.5, 0.5, 1.0], [1.0, 1.0, 1.0], [0.5, 1.0, None]),
     "oracle": ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, None])},
]


def write_pool(folder, seed, pool_mean=0.25):
    scorers = {}
    for name, (two, four, auc) in PER_PROMPT[seed].items():
        scorers[name] = dict(
            best_of={"1": dict(mean=pool_mean, se=0.0), "2": dict(mean=sum(two) / 3, se=0.0),
                     "4": dict(mean=sum(four) / 3, se=0.0)},
            per_prompt=dict(best_of={"2": two, "4": four}, auc=auc))
    summary = dict(num_candidates=4, temperature=1.0, prompts=3, metric="accuracy",
                   pool_mean=pool_mean, scorers=scorers)
    folder.mkdir(parents=True)
    (folder / "critic_summary.json").write_text(json_text(summary))


def approx(value):
    """value as the tables print it: 3 decimals."""
    return pytest.approx(value, abs=5e-4)


def number(cell):
    """The mean of a cell 'mean [low, high]'."""
    return float(cell.split(" [")[0])


def table_cells(rows, scorer, after=0):
    """The cells of scorer's row of the first table after rows[after]."""
    row = next(r for r in rows[after:] if r.startswith(f"| {scorer} |"))
    return [c.strip() for c in row.strip("|").split("|")][1:]


def test_scorers_are_named_by_family():
    assert critic_report.family_scorer("logp[mle_s3/best]") == "logp[mle]"
    assert critic_report.family_scorer("return_mean[irl_s12/best]") == "return_mean[irl]"
    assert critic_report.family_scorer("gail[gail_s0]") == "gail[gail]"
    assert critic_report.family_scorer("vote") == "vote"


def test_pool_table_by_hand(tmp_path):
    for seed in (0, 1):
        write_pool(tmp_path / f"mle_s{seed}", seed)
    rows = critic_report.pool_rows("arith", "mle", critic_report.read_pools(tmp_path, "mle", 2))
    # best-of-N: the mean over seeds of each seed's mean over prompts
    cells = table_cells(rows, "return[irl]")
    assert float(cells[0]) == approx((1.5 / 3 + 1.5 / 3) / 2)
    assert float(cells[1]) == approx((2 / 3 + 2 / 3) / 2)
    # AUC over the (seed, prompt) pairs that have one: (1 + .75 + 0 + 1) / 4
    assert number(cells[2]) == approx(2.75 / 4)
    assert number(table_cells(rows, "logp[mle]")[2]) == approx(2.25 / 4)
    # the paired table: return[irl] - logp[mle], best-of-4 per (seed, prompt), AUC where defined
    paired = table_cells(rows, "return[irl]", rows.index("| scorer | best-of-4 | AUC |"))
    assert number(paired[0]) == approx(((1 + 0 + 0) + (-1 + 0 + 0)) / 6)
    assert number(paired[1]) == approx((0.5 + 0.5 - 0.5 + 0) / 4)
    low, high = (float(x) for x in paired[1].split(" [")[1].rstrip("]").split(", "))
    assert low <= number(paired[1]) <= high
    assert not any(r.startswith("| oracle |") for r in rows[rows.index(
        "| scorer | best-of-4 | AUC |"):])  # the ceiling is not a scorer to compare


def test_beam_table_by_hand(tmp_path):
    beams = [[(1.0, 0.0, "a", "b"), (0.0, 0.0, "c", "c")], [(1.0, 1.0, "d", "d"),
                                                            (0.0, 1.0, "e", "f")]]
    for seed, rows in enumerate(beams):
        folder = tmp_path / "arith" / f"irl_s{seed}"
        folder.mkdir(parents=True)
        (folder / "critic_summary.json").write_text(json.dumps(dict(beam=dict(beam_size=4))))
        (folder / "critic_beam.jsonl").write_text("".join(json.dumps(dict(
            logp_beam_oracle=a, reward_beam_oracle=b, logp_beam=x, reward_beam=y)) + "\n"
            for a, b, x, y in rows))
    cells = table_cells(critic_report.beam_rows({"arith": tmp_path / "arith"}, 2), "arith")
    assert cells[0] == "4"
    assert number(cells[1]) == approx(0.5) and number(cells[2]) == approx(0.5)
    assert number(cells[3]) == approx((-1 + 0 + 0 + 1) / 4)
    assert cells[4] == "2 of 4"


def test_json_text_is_json_with_flat_number_lists():
    record = {"a": [1, 2.5, None], "b": {"c": [[1, 2], {"d": "x[y]: [z]"}], "e": {}}, "f": []}
    text = json_text(record)
    assert json.loads(text) == record
    assert '"a": [1, 2.5, null]' in text and '"d": "x[y]: [z]"' in text
