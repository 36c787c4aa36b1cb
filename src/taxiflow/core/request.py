"""What a training (or scoring) run is asked to do: one typed, validated definition.

`TrainRequest` is the single source of the `train` flow's parameters (its signature, hence Prefect's
run form, is generated from it: `flow_signature`) and of `taxiflow train`'s options (the CLI builds
them from the same fields). Field constraints give both the same bounds; the model validator adds
what one field can't say alone (months in order, a feature the trip type lacks, force needs a reason).
`ScoreRequest` does the same for the `score` flow and `taxiflow score`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from taxiflow.core.backfill import BackfillMode, MonthPair, month_pairs
from taxiflow.core.errors import InvalidArgumentError
from taxiflow.core.feature_names import parse_features, required_columns
from taxiflow.core.months import MAX_TRAIN_MONTHS, Month, parse_training_months
from taxiflow.core.notification_targets import parse_target
from taxiflow.core.schema import check_fields_available
from taxiflow.core.xgboost_params import XGBoostParams

MONTH_PATTERN = r"^\d{4}-(0[1-9]|1[0-2])$"
MonthText = Annotated[str, Field(pattern=MONTH_PATTERN, description="YYYY-MM")]
DASK_ADDRESS_PATTERN = r"^(tcp|tls|ucx|inproc)://\S+$"
_MONTH = MONTH_PATTERN.strip("^$")
TRAIN_MONTHS_PATTERN = rf"^{_MONTH}(\.\.{_MONTH})?$"
TaxiType = Literal["green", "yellow", "fhv", "fhvhv"]
SourceChoice = Literal["auto", "local", "tlc", "s3"]
TrainSourceChoice = Literal["auto", "local", "tlc", "s3", "postgres"]
ModelChoice = Literal["xgboost", "linear"]
EngineChoice = Literal["local", "dask"]
FeatureChoice = Literal["pu_do", "pu", "do", "distance"]
PromotePolicy = Literal["auto", "never", "force"]

_XGB = XGBoostParams()


class TrainRequest(BaseModel):
    """One training run: train on `train_month` (one month or a range), validate on `val_month`, register, gate."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    taxi: TaxiType = Field("green", description="trip type")
    train_month: str = Field(
        "2023-01",
        pattern=TRAIN_MONTHS_PATTERN,
        description=f"YYYY-MM: the month to train on; or YYYY-MM..YYYY-MM: every month of the range (at most {MAX_TRAIN_MONTHS})",
    )
    val_month: MonthText = Field("2023-02", description="YYYY-MM, after train_month: the month to validate on")
    data_dir: str | None = Field(None, description="directory of TLC-named parquet files (default: ./data, or TAXIFLOW_DATA_DIR)")
    source: TrainSourceChoice = Field(
        "auto",
        description="auto: the data dir, else download from the TLC; local: data dir only; tlc / s3: always from there (cached); "
        "postgres: months loaded with `taxiflow data load-sql`",
    )
    s3_block: str | None = Field(None, max_length=200, description="prefect-aws S3Bucket block for source s3 (default taxi-data)")
    tlc_base_url: str | None = Field(None, max_length=500, description="where months missing from the data dir are downloaded from ('' disables downloads)")
    month_window_days: int | None = Field(
        None, ge=0, le=31, description="drop trips whose pickup is outside the file's month by more than N days (default: off, as the course)"
    )
    model: ModelChoice = Field("xgboost", description="xgboost, or linear (scikit-learn LinearRegression)")
    features: list[FeatureChoice] = Field(["pu_do", "distance"], min_length=1, description="one-hot pu_do / pu / do, and distance")
    min_count: int = Field(1, ge=1, le=1_000_000, description="drop one-hot categories seen fewer times in training (1: DictVectorizer semantics)")
    collapse_duplicates: bool = Field(True, description="XGBoost fits one weighted row per distinct input (same model, faster)")
    learning_rate: float | None = Field(None, gt=0, le=1, description=f"XGBoost learning_rate (default {_XGB.learning_rate:.4g})")
    max_depth: int | None = Field(None, ge=1, le=100, description=f"XGBoost max_depth (default {_XGB.max_depth})")
    min_child_weight: float | None = Field(None, ge=0, le=1e6, description=f"XGBoost min_child_weight (default {_XGB.min_child_weight:.4g})")
    reg_alpha: float | None = Field(None, ge=0, le=1e6, description=f"XGBoost reg_alpha (default {_XGB.reg_alpha:.4g})")
    reg_lambda: float | None = Field(None, ge=0, le=1e6, description=f"XGBoost reg_lambda (default {_XGB.reg_lambda:.4g})")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description=f"XGBoost seed (default {_XGB.seed})")
    num_boost_round: int | None = Field(None, ge=1, le=10_000, description=f"XGBoost boosting rounds (default {_XGB.num_boost_round})")
    early_stopping_rounds: int | None = Field(
        None, ge=0, le=10_000, description=f"stop after this many rounds without improvement; 0 disables (default {_XGB.early_stopping_rounds})"
    )
    experiment_name: str | None = Field(None, min_length=1, max_length=200, description="MLflow experiment (default nyc-taxi-experiment)")
    model_name: str | None = Field(None, min_length=1, max_length=200, description="registered model name (default nyc-taxi-duration)")
    promote: PromotePolicy = Field("auto", description="auto: champion only if better on the validation month; never; force (with a reason)")
    promotion_margin: float = Field(
        0.0, ge=0, le=60, description="minutes of RMSE the challenger must beat the champion by (0: any improvement; a tie keeps the champion)"
    )
    promotion_reason: str | None = Field(None, max_length=500, description="why (recorded on the version; required with promote force)")
    notify: list[str] | None = Field(
        None, max_length=20, description="notification targets webhook:<block> or email:<block>:<to> (default: TAXIFLOW_NOTIFY_TARGETS)"
    )
    refresh: bool = Field(False, description="read and prepare the months again instead of using their cached prepared trips")
    retrain: bool = Field(False, description="train even if a committed version was trained on identical inputs (else that run is returned, marked cached)")
    engine: EngineChoice = Field(
        "local", description="where XGBoost fits: local (this process) or dask (xgboost.dask on dask_address, else a LocalCluster on this machine)"
    )
    dask_address: str | None = Field(None, pattern=DASK_ADDRESS_PATTERN, max_length=500, description="Dask scheduler for engine dask, e.g. tcp://10.0.0.5:8786")
    params: str | None = Field(
        None,
        min_length=1,
        max_length=1000,
        description="XGBoost parameters from a file: best (the last `taxiflow tune` for this trip type) or a TOML file's path; parameters given here win",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TrainRequest:
        parse_training_months(self.train_month, self.val_month)
        features = parse_features(self.features)
        check_fields_available(self.taxi, required_columns(features), what="features")
        if self.promote == "force" and not (self.promotion_reason or "").strip():
            raise InvalidArgumentError("promote force needs promotion_reason: who is forcing it and why")
        if self.engine == "dask" and self.model != "xgboost":
            raise InvalidArgumentError(f"engine dask fits XGBoost (xgboost.dask): model {self.model} fits in this process; use engine local")
        if self.engine == "dask" and self.source == "postgres":
            raise InvalidArgumentError("engine dask: the workers read month files; months from source postgres are read in this process (use engine local)")
        if self.dask_address and self.engine != "dask":
            raise InvalidArgumentError("dask_address is for engine dask")
        if self.notify:
            for target in self.notify:
                parse_target(target)
        return self

    @property
    def feature_set(self) -> tuple[str, ...]:
        return parse_features(self.features)

    @property
    def train_months(self) -> tuple[str, ...]:
        """The months trained on, in order (one, or each of a range)."""
        return tuple(str(m) for m in parse_training_months(self.train_month, self.val_month)[0])

    def with_params(self, values: Mapping[str, float | int]) -> TrainRequest:
        """This request with a params file's values under the parameters it sets itself (those win)."""
        # A flow's caller may pass every parameter, unset ones as None: only values count as given.
        given = {k: v for k, v in self.model_dump(exclude_unset=True).items() if v is not None}
        return validated_request(TrainRequest, {**{k: v for k, v in values.items() if getattr(self, k) is None}, **given})

    def xgboost_params(self) -> XGBoostParams:
        return XGBoostParams().with_overrides(
            learning_rate=self.learning_rate,
            max_depth=self.max_depth,
            min_child_weight=self.min_child_weight,
            reg_alpha=self.reg_alpha,
            reg_lambda=self.reg_lambda,
            seed=self.seed,
            num_boost_round=self.num_boost_round,
            early_stopping_rounds=self.early_stopping_rounds,
        )


class ScoreRequest(BaseModel):
    """One batch scoring run: predict every ride of `month` with the champion (or `model_version`), check drift."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    taxi: TaxiType = Field("green", description="trip type")
    month: MonthText = Field(description="YYYY-MM: the month to score")
    data_dir: str | None = Field(None, description="directory of TLC-named parquet files (default: ./data, or TAXIFLOW_DATA_DIR)")
    source: SourceChoice = Field(
        "auto", description="auto: the data dir, else download from the TLC; local: data dir only; tlc / s3: always from there (cached)"
    )
    s3_block: str | None = Field(None, max_length=200, description="prefect-aws S3Bucket block for source s3 and output s3 (default taxi-data)")
    tlc_base_url: str | None = Field(None, max_length=500, description="where months missing from the data dir are downloaded from ('' disables downloads)")
    model_version: int | None = Field(None, ge=1, le=1_000_000_000, description="registered version to score with (default: the champion)")
    model_name: str | None = Field(None, min_length=1, max_length=200, description="registered model name (default nyc-taxi-duration)")
    experiment_name: str | None = Field(None, min_length=1, max_length=200, description="MLflow experiment of the drift run (default nyc-taxi-experiment)")
    output: str | None = Field(
        None,
        min_length=1,
        max_length=1000,
        description="directory the predictions go under, as <taxi>/<month>/predictions-v<N>.parquet (default: <state dir>/predictions); "
        "s3: the S3Bucket block's bucket, under predictions/",
    )
    drift_threshold: float = Field(
        0.5, ge=0, le=1, description="dataset drift (and a notification) when at least this share of the checked columns drifted (Evidently's 0.5)"
    )
    notify: list[str] | None = Field(
        None, max_length=20, description="targets notified of dataset drift: webhook:<block> or email:<block>:<to> (default: TAXIFLOW_NOTIFY_TARGETS)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> ScoreRequest:
        Month.parse(self.month)
        if self.notify:
            for target in self.notify:
                parse_target(target)
        return self


_PAIR_FIELDS = ("taxi", "train_month", "val_month", "promotion_reason", "retrain")


class _BackfillFields(BaseModel):
    """A backfill's own fields; `BackfillRequest` adds every training option of `TrainRequest` after them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    taxi: TaxiType = Field("green", description="trip type")
    from_month: MonthText = Field(description="YYYY-MM: the first month of the range (trained on, validated on the next)")
    to_month: MonthText = Field(description="YYYY-MM: the last month of the range (validates the pair before it)")
    mode: BackfillMode = Field(
        "missing", description="missing: skip pairs already trained on identical inputs; failed: only pairs whose last run failed; all: every pair"
    )
    max_concurrency: int = Field(2, ge=1, le=8, description="pairs trained at once (their gates still run in month order)")
    dry_run: bool = Field(False, description="print the plan (each pair and why it runs or is skipped) and change nothing")

    def pairs(self) -> list[MonthPair]:
        return month_pairs(Month.parse(self.from_month, argument="from_month"), Month.parse(self.to_month, argument="to_month"))

    def pair_request(self, pair: MonthPair, *, retrain: bool = False) -> TrainRequest:
        """The `train` request of one pair: this backfill's training options and the pair's months."""
        options = self.model_dump(exclude_unset=True, exclude=set(_BackfillFields.model_fields) - {"taxi"})
        return TrainRequest.model_validate(options | {"train_month": pair.train_month, "val_month": pair.val_month, "retrain": retrain})

    @model_validator(mode="after")
    def _consistent(self) -> _BackfillFields:
        if not self.pairs():
            raise InvalidArgumentError(f"to_month: expected a month after from_month ({self.from_month}), got {self.to_month}")
        if getattr(self, "promote", "auto") == "force":
            raise InvalidArgumentError("promote force would make every pair champion in turn: use auto or never (and `taxiflow models promote`)")
        self.pair_request(self.pairs()[0])  # every training option checked as `train` checks it
        return self


_TUNE_TRAIN_FIELDS = (
    *("taxi", "train_month", "val_month", "data_dir", "source", "s3_block", "tlc_base_url", "month_window_days", "features"),
    *("num_boost_round", "early_stopping_rounds", "experiment_name", "model_name", "promote", "promotion_margin", "notify", "refresh"),
)


class _TuneFields(BaseModel):
    """A search's own fields; `TuneRequest` adds the training options it shares with `TrainRequest` after them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trials: int = Field(50, ge=1, le=10_000, description="trials the study should have in all (a resumed study runs only the rest)")
    timeout_s: float | None = Field(None, gt=0, le=7 * 86400, description="start no new trial after this many seconds (running ones finish)")
    max_concurrency: int = Field(2, ge=1, le=8, description="trials fitted at once (each on cores / this many threads)")
    space_file: str | None = Field(
        None, min_length=1, max_length=1000, description="TOML file replacing ranges of the course's search space ([space.max_depth] high = 30, ...)"
    )
    pruning: bool = Field(True, description="stop trials whose validation curve is worse than the median of earlier trials at the same round")
    sampler_seed: int = Field(42, ge=0, le=2**31 - 1, description="seed of the search (TPE): the same study asks the same parameters")
    train_best: bool = Field(True, description="train the best parameters with `train` at the end: registered and gated like any model")
    dask_address: str | None = Field(
        None,
        pattern=DASK_ADDRESS_PATTERN,
        max_length=500,
        description="fit the trials on the Dask scheduler at this address (one worker per trial), e.g. tcp://10.0.0.5:8786; default: in this process",
    )

    def trial_request(self, space) -> TrainRequest:
        """The training setup every trial shares: its vocabulary keeps every category any trial's min_child_weight can split."""
        low = min((r.low for r in space if r.name == "min_child_weight"), default=None)
        options = self.model_dump(exclude_unset=True, exclude=set(_TuneFields.model_fields))
        return TrainRequest.model_validate(options | ({"min_child_weight": low} if low is not None else {}))

    def best_train_request(self, params_file: str) -> TrainRequest:
        """The `train` run of the best parameters: this search's options and its params file."""
        options = self.model_dump(exclude_unset=True, exclude=set(_TuneFields.model_fields))
        return TrainRequest.model_validate(options | {"params": params_file})

    @model_validator(mode="after")
    def _consistent(self) -> _TuneFields:
        if getattr(self, "promote", "auto") == "force":
            raise InvalidArgumentError("promote force: a search's result goes through the gate (auto) or is only registered (never)")
        self.best_train_request("best")  # every training option checked as `train` checks it
        return self


# The training options, defined once (in TrainRequest) and shared field for field.
TuneRequest = create_model(
    "TuneRequest",
    __base__=_TuneFields,
    __doc__="A hyperparameter search on one month pair (Optuna, resumable), then the best parameters trained through the gate.",
    **{name: (field.annotation, field) for name, field in TrainRequest.model_fields.items() if name in _TUNE_TRAIN_FIELDS},  # type: ignore[call-overload]
)

BackfillRequest = create_model(
    "BackfillRequest",
    __base__=_BackfillFields,
    __doc__="A range of months: one `train` run per consecutive pair, concurrent, gated in month order.",
    **{name: (field.annotation, field) for name, field in TrainRequest.model_fields.items() if name not in _PAIR_FIELDS},  # type: ignore[call-overload]
)


def validated_request(model: type[BaseModel], values: dict[str, Any], *, option_names: dict[str, str] | None = None) -> Any:
    """Build a request, turning pydantic's report into one InvalidArgumentError line per problem.

    `option_names` maps fields to how the caller spelled them (the CLI's `--max-depth`).
    """
    names = option_names or {}
    try:
        return model.model_validate(values)
    except InvalidArgumentError as exc:  # a rule across fields, raised as is by the model validator
        raise InvalidArgumentError(_spelled(str(exc), names)) from None
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            label = names.get(field, field)
            cause = error.get("ctx", {}).get("error")
            if isinstance(cause, InvalidArgumentError):
                # A rule across fields: name each field as the caller spells it.
                problems.append(_spelled(str(cause), names))
                continue
            given = error.get("input")
            pattern = error.get("ctx", {}).get("pattern")
            if error["type"] == "string_pattern_mismatch" and pattern in (MONTH_PATTERN, TRAIN_MONTHS_PATTERN):
                try:  # the month parser says what is wrong with it (format, month 13, before 2009)
                    for part in str(given).split("..") if pattern == TRAIN_MONTHS_PATTERN else [str(given)]:
                        Month.parse(part, argument=label)
                except InvalidArgumentError as month_error:
                    problems.append(str(month_error))
                    continue
                if pattern == TRAIN_MONTHS_PATTERN:
                    problems.append(f"{label}: expected YYYY-MM or a range YYYY-MM..YYYY-MM, got {given!r}")
                    continue
            expected = _expected(model, field, error)
            if expected is not None:
                problems.append(f"{label}: expected {expected}, got {given!r}")
            else:
                problems.append(f"{label}: {error['msg'].removeprefix('Value error, ')}" if label else error["msg"])
        raise InvalidArgumentError("; ".join(problems)) from None


def _spelled(text: str, names: dict[str, str]) -> str:
    """A message naming fields as the caller spells them (`val_month` -> `--val-month`)."""
    for name in sorted(names, key=len, reverse=True):
        # One-word names (`model`, `features`) are plain words in prose: only as a message's subject.
        pattern = rf"(?<![\w-]){name}\b" if "_" in name else rf"^{name}\b"
        text = re.sub(pattern, names[name], text)
    return text


def _expected(model: type[BaseModel], field: str, error: Mapping[str, Any]) -> str | None:
    """The allowed values of a field, as a user would read them ('an integer in 1..64')."""
    info = model.model_fields.get(field)
    if info is None:
        return None
    low = high = None
    for constraint in info.metadata:
        low = getattr(constraint, "ge", getattr(constraint, "gt", low))
        high = getattr(constraint, "le", getattr(constraint, "lt", high))
    kind = "an integer" if error["type"].startswith("int") or "int" in str(info.annotation) and "float" not in str(info.annotation) else "a number"
    if low is not None or high is not None:
        strict = any(hasattr(c, "gt") for c in info.metadata)
        lower = f"> {low}" if strict else f">= {low}"
        if high is None:
            return f"{kind} {lower}"
        return f"{kind} in {low}..{high}" if not strict else f"{kind} {lower} and <= {high}"
    if error["type"] == "literal_error":
        return "one of " + error["ctx"]["expected"].replace("'", "")
    return None


def flow_signature(model: type[BaseModel]) -> inspect.Signature:
    """A keyword-only signature with one typed, bounded, documented parameter per field.

    Prefect builds a flow's parameter schema (the UI's run form) and validates calls from its
    function's signature: generated here, the form stays flat while the fields are defined once.
    """
    parameters = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        constraints = Field(description=field.description)
        metadata = [constraints, *field.metadata]
        default = inspect.Parameter.empty if field.is_required() else field.default  # required: the run form asks for it
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[(annotation, *metadata)]))
    return inspect.Signature(parameters, return_annotation=dict)


def flow_docstring(summary: str, model: type[BaseModel]) -> str:
    """`summary` plus a Google-style Args section: Prefect shows these as the run form's field help."""
    lines = [summary, "", "Args:"]
    lines += [f"    {name}: {field.description}" for name, field in model.model_fields.items() if field.description]
    return "\n".join(lines)
