"""A trained model as plain files (no pickle): vocabulary JSON + XGBoost UBJSON or linear JSON."""

from __future__ import annotations

import json
from pathlib import Path

from taxiflow.core.features import FeatureVocabulary
from taxiflow.core.training import DurationModel, LinearModel, XGBoostModel

VOCABULARY_FILE = "feature_vocabulary.json"
MANIFEST_FILE = "bundle.json"
_MODEL_FILE = {"xgboost": "model.ubj", "linear": "linear_model.json"}


def save_model_bundle(model: DurationModel, vocabulary: FeatureVocabulary, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / VOCABULARY_FILE).write_text(vocabulary.to_json())
    model_file = directory / _MODEL_FILE[model.kind]
    if isinstance(model, XGBoostModel):
        model.booster.save_model(str(model_file))
    elif isinstance(model, LinearModel):
        model_file.write_text(model.to_json())
    else:  # pragma: no cover - guarded by DurationModel kinds
        raise TypeError(f"cannot save model of kind {model.kind!r}")
    (directory / MANIFEST_FILE).write_text(json.dumps({"kind": model.kind, "model_file": model_file.name}))
    return directory


def bundle_model_file(manifest_text: str) -> str:
    """The model file's name a manifest names: a plain name of a known kind, never a path."""
    manifest = json.loads(manifest_text)
    name = manifest.get("model_file")
    if manifest.get("kind") not in _MODEL_FILE or name != _MODEL_FILE[manifest["kind"]]:
        raise ValueError(f"{MANIFEST_FILE}: unknown model kind {manifest.get('kind')!r} or file {name!r}")
    return name


def load_model_bundle(directory: Path) -> tuple[DurationModel, FeatureVocabulary]:
    manifest_text = (directory / MANIFEST_FILE).read_text()
    manifest = json.loads(manifest_text)
    vocabulary = FeatureVocabulary.from_json((directory / VOCABULARY_FILE).read_text())
    model_file = directory / bundle_model_file(manifest_text)
    if manifest["kind"] == "xgboost":
        import xgboost as xgb

        booster = xgb.Booster()
        booster.load_model(str(model_file))
        return XGBoostModel(booster=booster, best_iteration=None), vocabulary
    if manifest["kind"] == "linear":
        return LinearModel.from_json(model_file.read_text()), vocabulary
    raise ValueError(f"{directory}: unknown model kind {manifest['kind']!r}")
