"""The `taxiflow` command. Arguments are checked before Prefect is imported, so mistakes fail fast."""

from __future__ import annotations

import argparse
import json
import os
import sys

from taxiflow.core.errors import InvalidArgumentError, TaxiflowError
from taxiflow.core.features import DEFAULT_FEATURES, parse_features
from taxiflow.core.months import parse_month_pair
from taxiflow.core.schema import TAXI_TYPES
from taxiflow.core.training import MODEL_KINDS, XGBoostParams

# Offline-friendly defaults: telemetry calls fail without internet and only add noise.
_QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
}
_XGB_OPTIONS = {
    "learning_rate": float,
    "max_depth": int,
    "min_child_weight": float,
    "reg_alpha": float,
    "reg_lambda": float,
    "seed": int,
    "num_boost_round": int,
    "early_stopping_rounds": int,
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taxiflow", description="NYC taxi trip-duration training pipeline.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train, evaluate and register a model (one Prefect flow run)")
    train.add_argument("--taxi", choices=TAXI_TYPES, default="green")
    train.add_argument("--train-month", required=True, help="YYYY-MM")
    train.add_argument("--val-month", required=True, help="YYYY-MM, after --train-month")
    train.add_argument("--data-dir", help="directory of TLC-named parquet files (default: ./data, or TAXIFLOW_DATA_DIR)")
    train.add_argument("--model", choices=MODEL_KINDS, default="xgboost")
    train.add_argument("--features", default=",".join(DEFAULT_FEATURES), help="comma list of pu_do, pu, do, distance")
    train.add_argument("--min-count", type=int, default=1, help="drop one-hot categories seen fewer times in training")
    train.add_argument(
        "--no-collapse-duplicates", dest="collapse_duplicates", action="store_false",
        help="fit on every row instead of one weighted row per distinct feature input (same model, slower)",
    )
    for name, kind in _XGB_OPTIONS.items():
        train.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None, help=f"XGBoost {name} (default {getattr(XGBoostParams(), name)})")
    train.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else SQLite in the state dir)")
    train.add_argument("--experiment", help="MLflow experiment (default nyc-taxi-experiment)")
    train.add_argument("--model-name", help="registered model name (default nyc-taxi-duration)")
    train.add_argument("--tlc-base-url", help="where to download months missing from the data dir")
    train.add_argument("--json", action="store_true", help="print one JSON object with the run's summary")
    return parser


def _train(args: argparse.Namespace) -> int:
    # Validate everything the user typed before paying for Prefect's start-up.
    parse_month_pair(args.train_month, args.val_month)
    features = parse_features(args.features)
    if args.min_count < 1:
        raise InvalidArgumentError(f"--min-count must be >= 1, got {args.min_count}")
    overrides = {name: getattr(args, name) for name in _XGB_OPTIONS}
    XGBoostParams().with_overrides(**overrides)
    if args.tracking_uri:
        # Passed by environment, not as a flow parameter: URIs can carry credentials.
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri

    from taxiflow.flows.train import train

    summary = train(
        taxi=args.taxi,
        train_month=args.train_month,
        val_month=args.val_month,
        data_dir=args.data_dir,
        model=args.model,
        features=list(features),
        min_count=args.min_count,
        collapse_duplicates=args.collapse_duplicates,
        experiment_name=args.experiment,
        model_name=args.model_name,
        tlc_base_url=args.tlc_base_url,
        **overrides,
    )
    if args.json:
        print(json.dumps(summary))
    else:
        print(_describe(summary))
    return 0


def _describe(summary: dict) -> str:
    lines = [
        f"Trained {summary['model']} on {summary['taxi']} {summary['train_month']} "
        f"({summary['rows_train']:,} of {summary['rows_train_read']:,} rows), "
        f"validated on {summary['val_month']} ({summary['rows_val']:,} of {summary['rows_val_read']:,} rows).",
        f"  validation RMSE {summary['rmse']:.4f} min, MAE {summary['mae']:.4f} min",
        f"  registered {summary['model_name']} version {summary['model_version']} ({summary['model_uri']})",
        f"  MLflow run {summary['run_id']} in {summary['tracking_uri']}",
        "  report: Prefect artifact 'duration-model-report'",
    ]
    if "intercept" in summary:
        lines.insert(2, f"  intercept {summary['intercept']:.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
    except InvalidArgumentError as exc:
        print(f"taxiflow: error: {exc}", file=sys.stderr)
        return 2
    except TaxiflowError as exc:
        print(f"taxiflow: error: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
