"""The platform benchmark's own logic (bench/): percentiles, capacity, options, the table.

The measurements themselves need running hubs; these check what turns numbers into the
figures that are reported, and that bad options are refused with a clear message.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import harness  # noqa: E402
import run  # noqa: E402
import transfer  # noqa: E402 - bench/transfer.py


def test_percentiles_interpolate_between_ranks():
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert harness.percentile(values, 50) == 3.0
    assert harness.percentile(values, 0) == 1.0
    assert harness.percentile(values, 100) == 5.0
    assert harness.percentile(values, 95) == pytest.approx(4.8)
    assert harness.percentile([7.0], 95) == 7.0


def test_summary_of_nothing_is_only_a_count():
    assert harness.summary([]) == {"n": 0}
    s = harness.summary([1.0, 2.0, 3.0])
    assert (s["n"], s["p50"], s["max"], s["mean"]) == (3, 2.0, 3.0, 2.0)
    with pytest.raises(ValueError):
        harness.percentile([], 50)


def test_capacity_is_what_hub_and_proxy_leave_divided_by_a_server():
    memory = {"hub_proxy_mib": 200.0, "server_mib": 100.0}
    assert harness.capacity_computed(memory, 1000) == 8
    assert harness.capacity_computed(memory, 150) == 0
    with pytest.raises(RuntimeError, match="not credible"):
        harness.capacity_computed({"hub_proxy_mib": 1.0, "server_mib": 0.0}, 1000)


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("run", ["--figures", "spawn,nonsense"], "unknown figure(s) nonsense"),
        ("run", ["--n", "5,x"], "not a comma-separated list"),
        ("run", ["--n", "0"], "at least 1"),
        ("run", ["--users", "0"], "--users must be at least 1"),
        ("run", ["--budget-mib", "0"], "--budget-mib must be positive"),
        ("run", ["--only", "both"], "invalid choice"),
        ("transfer", ["--files", "0"], "--files must be at least 1"),
        ("transfer", ["--large-mib", "-1"], "--large-mib must be at least 1"),
        ("transfer", ["--rounds", "0"], "--rounds must be at least 1"),
        ("transfer", ["--journaled", "yes"], "unrecognized arguments: yes"),
    ],
)
def test_bad_options_are_named(script, argv, message, capsys):
    module = run if script == "run" else transfer
    with pytest.raises(SystemExit) as exc:
        module.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_table_puts_deployments_side_by_side_with_ratio_and_verdict():
    args = run.parse_args(["--n", "10"])
    results = {
        "scirepo": {
            "spawn": {"spawn_one": {"p50": 1.2, "p95": 1.4, "max": 1.5}},
            "many": {10: {"all_ready": 12.0, "memory": {"server_mib": 70.0}}},
            "load": {"errors": 0},
        },
        "stock": {
            "spawn": {"spawn_one": {"p50": 3.6, "p95": 4.0, "max": 5.0}},
            "many": {10: {"all_ready": 24.0, "memory": {"server_mib": 108.0}}},
            "load": {"errors": 3},
        },
    }
    rows = {r["key"]: r for r in run.rows_of(results, args)}
    assert rows["spawn_one_p50"]["ratio"] == pytest.approx(1 / 3)
    assert rows["spawn_one_p50"]["pass"] is True
    assert rows["many_10_all_ready"]["pass"] is False
    assert rows["idle_server_mib"]["pass"] is True
    assert rows["load_errors"]["pass"] is True
    assert rows["load_errors"]["ratio"] == 0.0
    assert "login_lab_cold_p50" not in rows  # not measured: no row


def test_browser_figures_have_rows_and_only_the_first_visit_a_target():
    args = run.parse_args(["--figures", "browser"])
    browser = {
        "login_lab_cold": {"p50": 5.5},
        "login_lab_warm": {"p50": 3.5},
        "login_lab_returning": {"p50": 2.9},
    }
    stock = {"login_lab_cold": {"p50": 6.6}, "login_lab_warm": {"p50": 3.9}}
    results = {"scirepo": {"browser": browser}, "stock": {"browser": stock}}
    rows = {r["key"]: r for r in run.rows_of(results, args)}
    assert rows["login_lab_cold_p50"]["pass"] is False  # 5.5 s against < 3 s
    assert rows["login_lab_returning_p50"]["scirepo"] == 2.9
    assert rows["login_lab_returning_p50"]["stock"] is None  # not measured there
    assert rows["login_lab_returning_p50"]["ratio"] is None
    assert rows["login_lab_returning_p50"]["target"] is None
    assert "returning browser" in rows["login_lab_returning_p50"]["figure"]


def test_cpu_probe_times_the_loop_it_is_given():
    short = run.cpu_probe(10_000)
    assert isinstance(short, float) and short > 0


def test_transfer_bench_journaled_image_holds_three_copies_of_the_data():
    args = transfer.parse_args(["--files", "1000", "--large-mib", "100", "--journaled"])
    assert args.journaled
    data = 1000 * (64 << 10) + (100 << 20)
    size = transfer.journaled_size(args)
    assert size >= 3 * data + (256 << 20)  # data, sandbox, site data, journal and bytecode
    assert size < 6 * data + (1 << 30)  # sparse, but not absurd


def test_every_figure_runs_by_default_but_accounts_only_for_this_tree(tmp_path):
    """`make bench` runs all of issue 7's figures, approval to SSH login and `make up`
    included; bench/accounts.py measures only this tree's host."""
    assert run.parse_args([]).figures == list(run.ALL_FIGURES)
    assert {"accounts", "makeup"} <= set(run.ALL_FIGURES)
    other = run.parse_args(["--root", str(tmp_path)])
    assert other.figures == [f for f in run.ALL_FIGURES if f != "accounts"]
    assert run.parse_args(["--figures", "spawn"]).figures == ["spawn"]


def test_accounts_of_another_tree_is_refused_naming_the_tree(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run.parse_args(["--figures", "accounts", "--root", str(tmp_path)])
    assert f"not --root {tmp_path}" in capsys.readouterr().err
