"""The claims of report.py and memory.py, the machinery experiment.py leans on: statistics over
tasks and runs, the results as data, the table rendered from that data alone, whole writes, and
the memory refusal.
"""
import json
import math
import os
import re

import numpy as np
import pytest

from machinery import program, report

EVAL_KS = (5, 10)
PAPER = {"MAML": {1: 0.67, 5: 0.38, 10: 0.35}, "pretrained": {1: 2.41, 5: 2.23, 10: 2.19}}


def results_of(mse, sizes=0.01, n_tasks=3, paper=False, seeds=None):
    """The results data of a made-up run: the same MSE array (runs, tasks, 11) for every model
    and K, and flat training losses."""
    mse = np.asarray(mse, np.float32 if np.asarray(mse).dtype == np.float32 else np.float64)
    runs = len(mse)
    curves = {(name, k): mse for k in EVAL_KS for name in ("MAML", "pretrained")}
    return report.results_data(
        command="python experiment.py", setup_name="paper", setup=dict(tasks=25, k=10),
        eval_tasks=n_tasks, seeds=seeds or list(range(runs)), eval_steps=[0, 1, 5, 10],
        paper=PAPER if paper else None, ms_per_step=1.0, curves=curves,
        step_sizes={key: np.broadcast_to(sizes, (runs,)) for key in curves},
        losses={name: np.ones((1000, runs)) for name in ("MAML", "pretrained")})


def table(*args, **kwargs):
    return report.render(results_of(*args, **kwargs))


def t_quantile(df, p=0.975):
    """Student's t quantile computed here, independently of report.py: bisection on the CDF, which
    is 1/2 plus the integral of the density from 0, by Simpson's rule on 20,000 intervals."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(t):
        x = np.linspace(0.0, t, 20_001)
        f = np.exp(log_c - (df + 1) / 2 * np.log1p(x ** 2 / df))
        return 0.5 + (x[1] - x[0]) / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())
    low, high = 0.0, 20.0
    for _ in range(60):
        low, high = (low, (low + high) / 2) if cdf((low + high) / 2) > p else ((low + high) / 2, high)
    return (low + high) / 2


def test_t975_is_the_students_t_quantile():
    """Every entry of the table (1 to 30 degrees of freedom) within its 3-decimal rounding, 5e-4,
    of the quantile computed independently; from 31 to 200 the expansion within 1e-4, as t975
    claims; and the normal's 1.960 far out."""
    for df in range(1, 31):
        assert abs(report.t975(df) - t_quantile(df)) <= 5e-4 + 1e-9, (df, report.t975(df), t_quantile(df))
    for df in (31, 35, 40, 60, 100, 200):
        assert abs(report.t975(df) - t_quantile(df)) < 1e-4, (df, report.t975(df), t_quantile(df))
    assert abs(report.t975(10**6) - 1.959964) < 1e-5
    assert [report.t975(df) for df in range(1, 31)] == list(report.T975)  # the table itself up to 30


def test_beyond_the_table_t975_misses_only_the_third_term_of_the_expansion():
    """Past 30 degrees of freedom, t975 sums the expansion of t's quantile around the normal's z
    (Cornish-Fisher) up to 1/df^2: if both terms are right, what it misses is the next one,
    -(3z^7 + 19z^5 + 17z^3 - 15z) / (384 df^3), so the error times df^3 is within 10% of that
    coefficient at 40, 60 and 100 (seen: within 1.5%; the terms after it shrink as 1/df, and the
    1.5e-8 by which t975 rounds z would matter beside the error only far beyond 100).
    A wrong coefficient in the second term leaves an error of order 1/df^2 and fails here, even
    where it happens to lie nearer the quantile."""
    z = 1.959964
    third = -(3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    for df in (40, 60, 100):
        assert (report.t975(df) - t_quantile(df)) * df ** 3 == pytest.approx(third, rel=0.1), df


def test_between_runs_is_the_mean_and_a_students_t_interval():
    mean, half = report.between_runs([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0 and half == pytest.approx(2.776 * np.std([1, 2, 3, 4, 5], ddof=1) / np.sqrt(5), rel=1e-12)


def test_mean_ci_is_mean_and_1_96_standard_errors():
    mean, half = report.mean_ci(np.array([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5 and half == pytest.approx(1.96 * np.std([1, 2, 3, 4], ddof=1) / 2, rel=1e-15)


def test_both_intervals_are_computed_in_float64_whatever_their_input():
    """A float32 MSE of 3e32 (a task that ran away without overflowing) has a square that float32
    cannot hold: both intervals convert to float64 first, so they stay finite."""
    values = np.array([3e32, 1.0, 1.0], np.float32)
    with np.errstate(over="raise"):
        for interval in (report.mean_ci, report.between_runs):
            assert np.isfinite(interval(values)).all(), interval


def test_write_whole_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "figure.png"
    path.write_bytes(b"old")

    def broken(f):
        f.write(b"half a fig")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        program.write_whole(str(path), broken)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["figure.png"]
    program.write_whole(str(path), lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["figure.png"]


def test_report_shows_the_papers_numbers_only_beside_the_papers_setting():
    """The paper's MSEs belong to amplitudes U[0.1, 5]; beside the blog's U[0.1, 0.5] they mislead."""
    assert table(np.ones((1, 3, 11)), paper=True).count("(paper)") == 2
    assert "(paper)" not in table(np.ones((1, 3, 11)), paper=False)


def test_report_leaves_diverged_tasks_out_of_the_means_and_counts_them():
    """Three tasks: one improves (10 -> 5), one gets worse (1 -> 2), one overflows (1 -> inf).
    The row's means use the two finite tasks and carry a *; the worse count is 2 (inf and the
    1 -> 2 task), the worst finite one ended at 2, and the diverged one is counted on its own."""
    mse = np.array([[10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0],
                    [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0],
                    [1.0, 2.0, 4.0, 8.0, 1e3, 1e9, 1e20, 1e38, np.inf, np.inf, np.inf]])
    text = table(mse[None])
    n10 = "%.3f ± %.3f*" % report.mean_ci(np.array([5.0, 2.0]))
    assert re.search(rf"^  5  MAML +0\.01 +5\.500 ± \S+\*.* {re.escape(n10)}$", text, re.M)
    assert "K =  5, MAML: 2 of 3 tasks end 10 steps with a higher MSE than they started with (worst: 2.000)" in text
    assert text.count("1 of them diverged (MSE inf or NaN): left out of the row marked *") == 4


def test_a_mean_that_runaway_tasks_dominate_is_replaced_by_the_median_and_said_in_words():
    """One task of three runs away to 3e32 from step 5 (finite: it ran away without overflowing,
    as seen on a GPU). Its cells show the median over tasks with a dagger, and a line below says
    how many tasks ran away and gives the mean, in scientific notation; the mean is computed in
    float64, where its square fits."""
    mse = np.ones((3, 11), np.float32)
    mse[0, 5:] = 3e32
    with np.errstate(over="raise"):
        text = table(mse[None])
    assert re.search(r"^  5  MAML +0\.01 +1\.000 ± 0\.000 +1\.000 ± 0\.000 +median 1\.000† +median 1\.000†$",
                     text, re.M), text
    assert "† K = 5, MAML, n = 10: 1 of 3 tasks ran away (MSE over 10x its start) and make up most of the mean, " \
           "1.00e+32; the cell is the median over tasks" in text
    assert "(worst: 3.00e+32)" in text


def test_report_of_several_runs_gives_the_mean_of_run_means_a_t_interval_and_each_run():
    """Two runs of three tasks: run 0's tasks end at 1, 2, 3 (mean 2), run 1's at 3, 4, inf (mean of
    the finite ones 3.5, one diverged). The cell is the mean of 2 and 3.5 with the t interval of two
    runs (12.706 x s / sqrt 2), marked *; the per-run counts and means follow."""
    mse = np.ones((2, 3, 11))
    mse[0, :, -1], mse[1, :, -1] = [1.0, 2.0, 3.0], [3.0, 4.0, np.inf]
    text = table(mse, sizes=np.array([0.01, 0.02]))
    assert "mean of 2 runs ± 95% between-run interval, Student's t with 1 degrees of freedom" in text
    half = 12.706 * np.std([2.0, 3.5], ddof=1) / np.sqrt(2)
    assert re.search(rf"^  5  MAML +0\.01-0\.02 +1\.000 ± 0\.000\* .* 2\.750 ± {half:.3f}\*$", text, re.M), text
    assert "K =  5, MAML: tasks of 3 that end 10 steps with a higher MSE than they started with, per run: 2, 3; " \
           "diverged (left out): 0, 1" in text
    assert "run 1: n = 0: 1.000, n = 1: 1.000, n = 5: 1.000, n = 10: 3.500" in text




def test_runaway_tasks_dominate_a_mean_only_when_they_make_up_more_than_half_of_it():
    """Twenty tasks that start at 1: nineteen stay at 1; the last runs away (over 10x its start)
    to 12, which is 12 of a sum of 31 (under half: not dominated), to 19, exactly half of 38 (not
    more than half: not dominated), or to 25, 25 of 44 (over half)."""
    for last, dominated in ((12.0, False), (19.0, False), (25.0, True)):
        mse = np.ones((20, 11))
        mse[19, 1:] = last
        numbers = report.run_numbers(mse)
        assert list(numbers["runaway"][1:]) == [1] * 10 and numbers["runaway"][0] == 0
        assert list(numbers["dominated"][1:]) == [dominated] * 10 and numbers["median"][10] == 1.0


def test_a_task_at_exactly_ten_times_its_start_has_not_run_away():
    """A task runs away once its MSE *exceeds* 10 times its start: one at exactly 10 has not."""
    mse = np.ones((3, 11))
    mse[0, 1:] = report.RUNAWAY * 1.0
    assert list(report.run_numbers(mse)["runaway"]) == [0] * 11


def test_the_worst_task_is_the_highest_last_mse_of_those_that_end_above_their_start():
    """Four tasks: A goes 1 -> 2 (ends worse); B starts and ends at 3 (not worse: equal); C falls
    from 10 to 4 after one step and ends at 5 (above its first step, below its start); D starts at
    6, is at 7 one step before the end and ends at 4. Only A ends worse, so the worst is 2, and
    the count of tasks that end worse is 1."""
    mse = np.array([np.linspace(1.0, 2.0, 11), np.full(11, 3.0),
                    [10.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.5, 5.0],
                    [6.0, 6.0, 6.0, 6.0, 6.0, 6.0, 6.0, 6.0, 6.0, 7.0, 4.0]])
    numbers = report.run_numbers(mse)
    assert numbers["worst"] == 2.0 and numbers["worse"] == 1


def test_over_runs_counts_for_every_step_the_runs_whose_mean_runaway_tasks_dominate():
    """Three runs of twenty tasks that start at 1: in run 0 one task runs away to 25 from step 5
    (25 of a sum of 44: dominated), in run 1 none does, in run 2 one does from step 1. The count
    is 0 before adapting, 1 from step 1 and 2 from step 5."""
    runs = []
    for start in (5, None, 1):
        mse = np.ones((20, 11))
        if start:
            mse[0, start:] = 25.0
        runs.append(report.plain(report.run_numbers(mse)))
    assert report.over_runs(runs)["dominated"].tolist() == [0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2]


def test_a_run_is_stopped_when_adaptation_diverges_on_more_than_half_its_tasks():
    """most_diverged names (model, K), the run and the count of every run in which more than half
    the tasks diverged (inf or NaN anywhere in the curve): of four tasks, 3 is more than half
    (a NaN counts) and 2 is not; other models and K are judged on their own."""
    ok, half, most = np.ones((4, 11)), np.ones((4, 11)), np.ones((4, 11))
    half[:2, 5] = np.inf
    most[:2, -1], most[2, 3] = np.inf, np.nan
    curves = {("MAML", 5): np.stack([ok, most]), ("pretrained", 10): np.stack([half, ok, most])}
    assert report.most_diverged(curves) == [(("MAML", 5), 1, 3), (("pretrained", 10), 2, 3)]


def test_a_run_leaves_the_plateau_at_the_first_window_below_half_its_start():
    """Losses of 4 for 1,050 steps, then 1: the 100-step means fall below 2 (half of the first
    window's 4) first in the window of steps 1,100 to 1,200 (the one before has a mean of 2.5),
    so the run leaves at step 1,200; a run that stays at 4 never leaves. The final loss is the
    mean of the last 1,000 steps."""
    losses = np.full((3000, 2), 4.0)
    losses[1050:, 0] = 1.0
    t = report.training_numbers(losses)
    assert t["window"] == 100 and t["leaves_plateau"] == [1200, None]
    assert list(t["final"]) == [1.0, 4.0]


def test_results_data_is_plain_json_and_renders_the_same_after_a_round_trip(tmp_path):
    """The data holds only JSON's types (a diverged task's inf becomes null where it is a number
    of the data), so results.txt, rendered from results.json read back, is the same text."""
    mse = np.ones((2, 3, 11))
    mse[1, 2, 5:] = np.inf
    data = results_of(mse, paper=True)
    program.write_text(str(tmp_path / "results.json"), program.dumps(data))  # as write_run
    back = program.read_json(str(tmp_path / "results.json"))
    assert back == data and report.render(back) == report.render(data)
    assert json.loads(json.dumps(data, allow_nan=False)) == data  # no NaN or Infinity anywhere
