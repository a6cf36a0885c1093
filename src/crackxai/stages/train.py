"""Train: fine-tune ResNet50 on data/processed, track it in MLflow, write models/model.keras.

    python -m crackxai.train [train.epochs=3 model.weights=imagenet ...]
    python -m crackxai.train --params params.yaml          # how dvc.yaml runs it

Phase 1 trains the head with the backbone frozen (pretrained weights) or the whole network
(`model.weights=null`: a frozen random backbone would be useless). Phase 2, when
`train.fine_tune.unfreeze` and `train.fine_tune.epochs` are both > 0, fine-tunes the top
`unfreeze` ResNet stages at `train.fine_tune.lr` with BatchNorm kept in inference mode. Epochs are
numbered continuously across phases (1-based) in reports/train_history.csv and in MLflow.

A killed run resumes when rerun: models/.train_state holds Keras's BackupAndRestore state per
phase, the history so far, the best checkpoint and the MLflow run id, and is removed after a
successful finish. It is discarded when the configuration or the data changed in between.

Outputs: models/model.keras (raw 0-255 RGB in, softmax over classes.json's classes out; standard
Keras layers only, so plain `keras.saving.load_model` reads it), models/mlflow_run.json (the run
later stages log into), reports/train_history.csv. In MLflow the run holds the same model as an
MLflow model (`runs:/<run_id>/model`), registered as a new version of `tracking.registered_model`
(crackxai.tracking.registry).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import uuid
from typing import Any

from crackxai.config import Config, to_dict
from crackxai.config.entry import run_stage
from crackxai.core.entry import log
from crackxai.core.io import write_json
from crackxai.core.paths import (
    MANIFEST,
    MODEL_FILE,
    PROCESSED_DIR,
    RUN_FILE,
    TRAIN_HISTORY,
    TRAIN_STATE_DIR,
    project_root,
)
from crackxai.data.processed import Split
from crackxai.models.io import inference_model, save_model
from crackxai.models.resnet import build_model, resolve_weights
from crackxai.models.training import (
    configure_runtime,
    load_train_val,
    make_dataset,
    open_state,
    plan_phases,
    run_phases,
    write_history_csv,
)
from crackxai.tracking.keras_logger import MlflowLogger
from crackxai.tracking.registry import log_model
from crackxai.tracking.runs import (
    ATTEMPT_TAG,
    connect,
    find_attempt_run,
    resolve_tracking_uri,
    start_model_run,
    terminate_run,
    tracking_errors,
    write_run_file,
)

STAGE = "train"


def fingerprint(cfg: Config, train: Split, val: Split) -> str:
    """What a resumed run must share with the interrupted one: config that shapes training
    (not tracking), class list and split shapes."""
    c = to_dict(cfg)
    key = {"seed": c["seed"], "model": c["model"], "train": c["train"], "classes": train.classes,
           "shapes": [list(train.images.shape), list(val.images.shape)]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def main(cfg: Config) -> dict[str, Any]:
    """Train, save models/model.keras and return the kept epoch's val metrics."""
    import mlflow

    m, t = cfg.model, cfg.train
    configure_runtime(t.precision, cfg.seed, t.deterministic)
    train, val = load_train_val(PROCESSED_DIR)
    size = train.images.shape[1]
    log(STAGE, f"data: {len(train)} train / {len(val)} val images {size}x{size} from "
               f"{PROCESSED_DIR}, classes {train.classes} (output index = position)")
    # resolve_weights also fails fast on unavailable weights (no network, missing file).
    plan = plan_phases(resolve_weights(m.weights) is not None, t.epochs, t.lr,
                       t.fine_tune.unfreeze, t.fine_tune.epochs, t.fine_tune.lr)
    root = project_root()  # the MLflow store's home: DVC_ROOT for queued experiments
    uri = resolve_tracking_uri(cfg.tracking.uri, root)
    experiment_id = connect(uri, cfg.tracking.experiment)  # fails fast

    state_dir = TRAIN_STATE_DIR
    fp = fingerprint(cfg, train, val)
    state = open_state(state_dir, fp, lambda old: close_attempt(old, experiment_id))
    manifest_sha = hashlib.sha256(MANIFEST.read_bytes()).hexdigest() if MANIFEST.is_file() else ""
    # The attempt's token reaches the disk before its run exists: a kill in between leaves a run
    # the next start still finds (by its tag) and resumes, instead of one RUNNING forever.
    attempt = state.get("attempt") or uuid.uuid4().hex
    write_json(state_dir / "state.json", {**state, "fingerprint": fp, "attempt": attempt})
    tags = {"data.manifest_sha256": manifest_sha, "train.precision": t.precision,
            ATTEMPT_TAG: attempt}
    # the store failing mid-run (server down, SQLite locked): one paragraph, the state kept
    with tracking_errors(uri, STAGE):
        run_id = state.get("run_id") or (find_attempt_run(experiment_id, attempt) if state else None)
        run = start_model_run(cfg, root, STAGE, extra_tags={k: v for k, v in tags.items() if v},
                              run_id=run_id)
        write_json(state_dir / "state.json",
                   {"fingerprint": fp, "attempt": attempt, "run_id": run.info.run_id})
        log(STAGE, f"MLflow run {run.info.run_id} ({'resumed' if run_id else 'new'}) in experiment "
                   f"'{cfg.tracking.experiment}' at {mlflow.get_tracking_uri()}; "
                   f"train state in {state_dir}")
        try:
            log(STAGE, f"building ResNet50 (weights={m.weights}, {t.precision})")
            model = build_model(len(train.classes), size, m.weights, m.dropout, seed=cfg.seed)
            # augmentation in the input pipeline (train only), not in the saved model
            train_ds = make_dataset(train, t.batch_size, shuffle_seed=cfg.seed, flip=m.augment.flip,
                                    translate=m.augment.translate, augment_seed=cfg.seed)
            rows = run_phases(model, plan, train_ds, make_dataset(val, t.batch_size), state_dir,
                              TRAIN_HISTORY, t.patience, callbacks=[MlflowLogger()])
            model = inference_model(model)  # no optimizer state, in the file or in MLflow
            save_model(model, MODEL_FILE)
            write_history_csv(rows, TRAIN_HISTORY)
            log(STAGE, f"wrote {MODEL_FILE} and {TRAIN_HISTORY} ({len(rows)} epochs)")
            # the MLflow model holds the .keras file: no separate artifact copy of models/model.keras
            logged = log_model(model, val.images[:1], cfg.tracking.registered_model)
            name, version = cfg.tracking.registered_model, logged["version"]
            log(STAGE, f"logged the MLflow model {logged['model_uri']}, " + (
                f"registered as {name} version {version}" if version else
                "not registered (tracking.registered_model=null)"))
            write_run_file(run, RUN_FILE)
        except BaseException as exc:  # the state stays: a rerun resumes this run
            with contextlib.suppress(Exception):  # a dead store must not hide the first error
                mlflow.end_run(status="KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        mlflow.end_run()
        shutil.rmtree(state_dir, ignore_errors=True)
    log(STAGE, f"logged to MLflow run {run.info.run_id}; run id in {RUN_FILE}")
    best = min(rows, key=lambda r: r["val_loss"])
    return {"val/loss": best["val_loss"], "val/accuracy": best["val_accuracy"],
            "epochs": len(rows)}


def close_attempt(old: dict, experiment_id: str) -> None:
    """Mark the MLflow run of a discarded train state (config or data changed since) KILLED:
    by its id, or by its attempt tag when the kill came before the id was recorded."""
    run_id = old.get("run_id") or (old.get("attempt")
                                   and find_attempt_run(experiment_id, old["attempt"]))
    if run_id:
        terminate_run(run_id)


if __name__ == "__main__":
    run_stage(STAGE, main)
