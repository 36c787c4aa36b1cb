"""results.json -> a markdown report and two PNG plots."""

from __future__ import annotations

from pathlib import Path

STAGES = ("read", "prepare", "features", "train", "evaluate", "log")
STAGE_LABELS = {"log": "log + register (MLflow)"}
PAIR_LABELS = {"real": "real pair", "large": "large pair (resampled: rows repeat)", "nonrep": "large pair (non-repeating)"}
# The targets for the end-to-end figures, per pair (None: no target, reported for comparison).
END_TO_END_TARGETS = {"real": 1.3, "nonrep": 2.5}
FIXED_COST_TARGETS = {"stack": 2.0, "local": 4.0}


def _s(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _x(ratio: float) -> str:
    return f"{ratio:.1f}x" if ratio >= 1.95 else f"{ratio:.2f}x"


def _mb(value: float) -> str:
    return f"{value:,.0f}"


def _rows(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1_000_000 else f"{n:,}"


def _stage_table(pair: dict) -> list[str]:
    course, taxiflow = pair["runs"]["course"], pair["runs"]["taxiflow"]
    lines = ["| stage | course (s) | taxiflow (s) | course / taxiflow |", "|---|---:|---:|---:|"]
    for stage in STAGES:
        c, t = course["stages"][stage], taxiflow["stages"][stage]
        lines.append(f"| {STAGE_LABELS.get(stage, stage)} | {_s(c)} | {_s(t)} | {_x(c / t)} |")
    lines += [
        f"| **total (sum of stages)** | **{_s(course['total_s'])}** | **{_s(taxiflow['total_s'])}** | **{_x(course['total_s'] / taxiflow['total_s'])}** |",
        f"| whole process, with imports (s) | {_s(course['wall_s'])} | {_s(taxiflow['wall_s'])} | {_x(course['wall_s'] / taxiflow['wall_s'])} |",
        f"| peak RSS (MB) | {_mb(course['peak_rss_mb'])} | {_mb(taxiflow['peak_rss_mb'])} | {_x(course['peak_rss_mb'] / taxiflow['peak_rss_mb'])} |",
        f"| validation RMSE | {course['facts']['rmse']:.4f} | {taxiflow['facts']['rmse']:.4f} | |",
    ]
    return lines


def _targets(pair: dict) -> list[tuple[str, str]]:
    """(figure, value) rows for the issue's targets, from one pair's figures."""
    f = pair["figures"]
    rf, tr, ttm, orch, mem = f["read_to_features"], f["training"], f["time_to_model"], f["orchestration"], f["memory"]
    spread = orch["run_to_run_spread_s"]
    no_duplicates = ttm["taxiflow_no_duplicates_s"]
    return [
        (
            "Read -> feature matrix (s): course / taxiflow / bare decode of the 5 columns",
            f"{_s(rf['course_s'])} / {_s(rf['taxiflow_s'])} / {_s(rf['decode_floor_s'])}",
        ),
        ("… speed: course / taxiflow", f"**{_x(rf['course_over_taxiflow'])}**"),
        ("… taxiflow / bare decode", _x(rf["taxiflow_over_decode_floor"])),
        (
            "… peak RSS of that stage (MB): course / taxiflow / bare decode",
            f"{_mb(rf['course_peak_rss_mb'])} / {_mb(rf['taxiflow_peak_rss_mb'])} / {_mb(rf['decode_floor_peak_rss_mb'])}",
        ),
        ("Training stage (s): course / taxiflow", f"{_s(tr['course_train_s'])} / {_s(tr['taxiflow_train_s'])}"),
        ("XGBoost alone (s): every kept row / the rows taxiflow fits", f"{_s(tr['xgboost_all_rows_s'])} / {_s(tr['xgboost_fit_rows_s'])}"),
        ("Rows XGBoost fits: kept / taxiflow (duplicates collapsed)", f"{_rows(tr['rows_train'])} / {_rows(tr['rows_fit'])}"),
        (
            "Time to a registered model, sum of stages (s): course / taxiflow",
            f"{_s(ttm['course_s'])} / {_s(ttm['taxiflow_s'])} (**{_x(ttm['course_over_taxiflow'])}**)",
        ),
        ("… taxiflow if no row repeated (training on every kept row, s)", f"{_s(no_duplicates)} ({_x(ttm['course_s'] / no_duplicates)})"),
        (
            "… whole processes (s): course script / `taxiflow train` (server)",
            f"{_s(ttm['course_process_s'])} / {_s(ttm['taxiflow_cli_process_s'])} ({_x(ttm['course_over_taxiflow_cli'])})",
        ),
        (
            "Orchestration: Prefect flow (server) vs direct calls (s)",
            f"{_s(orch['flow_s'])} vs {_s(orch['direct_s'])}: **{orch['overhead_s']:+.2f}** "
            + (f"(run-to-run spread {_s(spread)})" if spread is not None else "(one run)"),
        ),
        (
            "… the same, each less its own XGBoost fit (s): flow / direct: **what Prefect adds**",
            f"{_s(orch['flow_without_fit_s'])} / {_s(orch['direct_without_fit_s'])}: **{orch['overhead_without_fit_s']:+.2f}** "
            f"(**{orch['overhead_share']:.1%}** of the direct total)",
        ),
        (
            "Peak RSS, whole run (MB): course / `taxiflow train` (server)",
            f"{_mb(mem['course_peak_rss_mb'])} / {_mb(mem['taxiflow_cli_peak_rss_mb'])} (**{_x(mem['course_over_taxiflow_cli'])}**)",
        ),
        (
            "Validation RMSE: course / taxiflow direct / flow / CLI",
            " / ".join(f"{f['rmse'][k]:.4f}" for k in ("course", "taxiflow", "flow_server", "cli_server")),
        ),
        ("Other load on the machine during the runs (cores, worst run)", f"{max(r['other_cpu_cores'] for r in pair['runs'].values()):.2f}"),
    ]


FIXED_COST_ROWS = (
    ("stack", "stack up: `PREFECT_API_URL` -> a running Prefect server; warm runner"),
    ("local", "no stack, local server and warm runner up (a machine's second and later runs)"),
    ("local_first", "no stack, first run: new PREFECT_HOME, starts the local server (database migrated) and the warm runner, new MLflow store"),
    ("temp", "old mode (`TAXIFLOW_LOCAL_PREFECT_IDLE_S=0`): temporary server in the run, PREFECT_HOME migrated before"),
    ("temp_first", "old mode, first run: new PREFECT_HOME (migrated in the run), new MLflow store"),
)


def _fixed_cost_table(pair: dict) -> list[str]:
    """`taxiflow train`'s fixed cost in each way it reaches Prefect (one pair's runs)."""
    fixed = pair["figures"]["fixed_cost"]
    lines = [
        "| `taxiflow train` | whole process (s) | in the flow (s) | **fixed cost** (s) | target | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode, label in FIXED_COST_ROWS:
        if mode in fixed:
            f = fixed[mode]
            target = f"<= {FIXED_COST_TARGETS[mode]:.0f}" if mode in FIXED_COST_TARGETS else ""
            lines.append(f"| {label} | {_s(f['wall_s'])} | {_s(f['flow_s'])} | **{_s(f['fixed_s'])}** | {target} | {_mb(f['peak_rss_mb'])} |")
        else:
            lines.append(f"| {label} | not run | | | | |")
    if "temp_over_local" in fixed:
        lines += [
            "",
            f"Old mode / local server, fixed cost: later runs **{_x(fixed['temp_over_local'])}** "
            f"({_s(fixed['temp']['fixed_s'])} s / {_s(fixed['local']['fixed_s'])} s), first runs {_x(fixed['temp_first_over_local_first'])} "
            f"({_s(fixed['temp_first']['fixed_s'])} s / {_s(fixed['local_first']['fixed_s'])} s).",
        ]
    return lines


def _end_to_end_table(pairs: dict) -> list[str]:
    """Course script vs `taxiflow train` (local server warm), whole processes, per pair."""
    figures = {name: pair["figures"]["end_to_end"] for name, pair in pairs.items()}

    def target(name: str) -> str:
        return f" (target >= {END_TO_END_TARGETS[name]}x)" if name in END_TO_END_TARGETS else ""

    rows = [
        ("Whole process (s): course script / `taxiflow train`", lambda n, e: f"{_s(e['course_process_s'])} / {_s(e['taxiflow_process_s'])}"),
        ("… course / taxiflow", lambda n, e: f"**{_x(e['course_over_taxiflow'])}**{target(n)}"),
        ("… of which `taxiflow train`'s fixed cost (s)", lambda n, e: _s(e["taxiflow_fixed_s"])),
        (
            "Validation RMSE: course / taxiflow (difference)",
            lambda n, e: f"{e['course_rmse']:.4f} / {e['taxiflow_rmse']:.4f} ({e['rmse_diff']:+.4f})" + (" (target within +-0.02)" if n == "nonrep" else ""),
        ),
        (
            "Peak RSS (MB): course / `taxiflow train` (taxiflow / course)",
            lambda n, e: (
                f"{_mb(e['course_peak_rss_mb'])} / {_mb(e['taxiflow_peak_rss_mb'])} (**{e['taxiflow_over_course_peak_rss']:.2f}**)"
                + (" (target <= 0.5)" if n == "nonrep" else "")
            ),
        ),
        (
            "Warm runner between runs, separately (MB): peak so far / now",
            lambda n, e: (
                f"{_mb(e['warm_runner_peak_rss_mb'])} / {_mb(e['warm_runner_rss_mb'])}" if e.get("warm_runner_peak_rss_mb") is not None else "not running"
            ),
        ),
        (
            "Local Prefect server, separately (MB): peak so far / now, its processes summed",
            lambda n, e: (
                f"{_mb(e['local_server_peak_rss_mb'])} / {_mb(e['local_server_rss_mb'])}" if e["local_server_peak_rss_mb"] is not None else "not running"
            ),
        ),
    ]
    lines = ["| | " + " | ".join(PAIR_LABELS.get(n, n) for n in figures) + " |", "|---|" + "---:|" * len(figures)]
    for label, value in rows:
        lines.append(f"| {label} | " + " | ".join(value(n, e) for n, e in figures.items()) + " |")
    return lines


def _scaling_table(scaling: list[dict]) -> list[str]:
    header = "| training rows read | kept | fitted | " + " | ".join(STAGE_LABELS.get(s, s) for s in STAGES) + " | total (s) | peak RSS (MB) | RMSE |"
    lines = [header, "|" + "---:|" * (len(STAGES) + 6)]
    for point in scaling:
        facts = point["facts"]
        stages = " | ".join(_s(point["stages"][s]) for s in STAGES)
        lines.append(
            f"| {_rows(point['train_rows_read'])} | {_rows(facts['rows_train'])} | {_rows(facts['rows_fit'])} | {stages} | "
            f"{_s(point['total_s'])} | {_mb(point['peak_rss_mb'])} | {facts['rmse']:.4f} |"
        )
    return lines


def markdown(results: dict) -> str:
    m, s = results["machine"], results["settings"]
    pairs = results["pairs"]
    lines = [
        "# taxiflow vs the course pipeline",
        "",
        f"{results['generated_at']}; {m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB RAM; Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + f". {s['num_boost_round']} boosting rounds (early stopping 20); real pair: fastest of {s['repeat_real_pair']} runs "
        "(first runs: one), large pairs: one run, but on the resampled one fastest of "
        f"{s['repeat_real_pair']} for taxiflow direct and flow and for read -> features. Full runs track to a new MLflow store whose schema "
        "exists (as after a first run), except `taxiflow train`'s first runs, which start from nothing.",
        "",
    ]
    disturbed = [
        f"{name}/{run_name} ({run['other_cpu_cores']:.2f})"
        for name, pair in pairs.items()
        for run_name, run in pair["runs"].items()
        if run["other_cpu_cores"] > s["max_other_load"]
    ]
    if disturbed:
        lines += [
            f"**Disturbed runs**: other work kept more than {s['max_other_load']} cores busy during "
            + ", ".join(disturbed)
            + ". Their times are inflated (XGBoost's two threads slow down several-fold when one core is taken).",
            "",
        ]
    for name, pair in pairs.items():
        rows = pair["rows_read"]
        facts = pair["runs"]["taxiflow"]["facts"]
        lines += [
            f"## {PAIR_LABELS.get(name, name)}: green {Path(pair['train_file']).stem[-7:]} -> {Path(pair['val_file']).stem[-7:]}",
            "",
            f"Rows read {_rows(rows[0])} / {_rows(rows[1])}, kept (1..60 min) {_rows(facts['rows_train'])} / {_rows(facts['rows_val'])}, "
            f"{facts['n_features'] + facts.get('n_features_pruned', 0):,} one-hot features (DictVectorizer's), "
            f"{facts['n_features']:,} of them splittable by XGBoost (min_child_weight) and kept by taxiflow.",
            "",
            *_stage_table(pair),
            "",
        ]
    lines += [
        "## End to end: the course's script vs `taxiflow train` (whole processes; no stack, local Prefect server warm)",
        "",
        *_end_to_end_table(pairs),
        "",
        f"## Fixed cost of `taxiflow train` (whole process minus its flow's own time), {PAIR_LABELS['real']}",
        "",
        *_fixed_cost_table(pairs["real"]),
        "",
    ]
    standard = {name: pair for name, pair in pairs.items() if "read_to_features" in pair["figures"]}
    lines += ["## Targets", "", "| | " + " | ".join(PAIR_LABELS.get(n, n) for n in standard) + " |", "|---|" + "---:|" * len(standard)]
    columns = [_targets(pair) for pair in standard.values()]
    for rows in zip(*columns, strict=True):
        lines.append(f"| {rows[0][0]} | " + " | ".join(value for _, value in rows) + " |")
    if results["scaling"]:
        lines += ["", "## Scaling: taxiflow (direct calls), 1M-row validation month", "", *_scaling_table(results["scaling"])]
    return "\n".join(lines) + "\n"


def plot_stages(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = results["pairs"]
    fig, axes = plt.subplots(len(pairs), 1, figsize=(10, 2.6 * len(pairs) + 0.6), squeeze=False)
    tab10 = plt.get_cmap("tab10")
    colors = {stage: tab10(i) for i, stage in enumerate(STAGES)}
    for ax, (name, pair) in zip(axes[:, 0], pairs.items(), strict=True):
        runs = pair["runs"]
        bars = [("course", runs["course"]), ("taxiflow (direct)", runs["taxiflow"])]
        for y, (_, run) in enumerate(bars):
            left = 0.0
            for stage in STAGES:
                width = run["stages"][stage]
                ax.barh(y, width, left=left, color=colors[stage], label=STAGE_LABELS.get(stage, stage) if y == 0 else None)
                left += width
            ax.text(left, y, f" {_s(left)} s, {_mb(run['peak_rss_mb'])} MB", va="center", fontsize=8)
        totals = [
            (label, seconds(runs[name]))
            for label, name, seconds in (
                ("taxiflow: Prefect flow (server)", "flow_server", lambda r: r["stages"]["flow"]),
                ("taxiflow train, whole process (stack)", "cli_server", lambda r: r["wall_s"]),
                ("taxiflow train, whole process (local server)", "cli_local", lambda r: r["wall_s"]),
                ("course script, whole process", "course", lambda r: r["wall_s"]),
            )
            if name in runs
        ]
        for y, (_, seconds) in enumerate(totals, start=len(bars)):
            ax.barh(y, seconds, color="0.6")
            ax.text(seconds, y, f" {_s(seconds)} s", va="center", fontsize=8)
        labels = [b[0] for b in bars] + [t[0] for t in totals]
        ax.set_yticks(range(len(labels)), labels)
        ax.invert_yaxis()
        ax.set_xlabel("seconds")
        ax.set_title(f"{PAIR_LABELS.get(name, name)}: {_rows(pair['rows_read'][0])} training / {_rows(pair['rows_read'][1])} validation rows", fontsize=10)
        ax.set_xlim(0, max([runs["course"]["total_s"], *(t[1] for t in totals)]) * 1.25)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", fontsize=8, ncols=len(STAGES))
    fig.suptitle(f"read -> registered model, {results['machine']['cores']} cores", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scaling(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = results["scaling"]
    rows = [p["train_rows_read"] / 1e6 for p in points]
    fig, (time_ax, mem_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    time_ax.plot(rows, [p["total_s"] for p in points], "o-", label="total")
    time_ax.plot(rows, [p["stages"]["train"] for p in points], "s--", label="train")
    time_ax.plot(rows, [p["stages"]["read"] + p["stages"]["prepare"] + p["stages"]["features"] for p in points], "^--", label="read -> features")
    time_ax.set(xlabel="training rows read (millions)", ylabel="seconds", title="time", ylim=(0, None))
    time_ax.legend(fontsize=8)
    mem_ax.plot(rows, [p["peak_rss_mb"] / 1024 for p in points], "o-", color="tab:red")
    mem_ax.set(xlabel="training rows read (millions)", ylabel="GB", title="peak RSS", ylim=(0, None))
    for ax in (time_ax, mem_ax):
        ax.set_xticks(rows)
        ax.grid(alpha=0.3)
    fig.suptitle(f"taxiflow scaling (direct calls, 1M-row validation month), {results['machine']['cores']} cores", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
