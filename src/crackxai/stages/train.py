"""Train: fine-tune ResNet50 on data/processed, track it in MLflow, write models/model.keras.

    python -m crackxai.train [train.epochs=3 model.weights=imagenet ...]
    python -m crackxai.train --params params.yaml          # how dvc.yaml runs it

Phase 1 trains the head with the backbone frozen (pretrained weights) or the whole network
(`model.weights=null`: a frozen random backbone would be useless). Phase 2, when
`train.fine_tune.unfreeze` and `train.fine_tune.epochs` are both > 0, fine-tunes the top
`unfreeze` ResNet stages at `train.fine_tune.lr` with BatchNorm kept in inference mode. Epochs are
numbered continuously across phases (1-based) in reports/train_history.csv and in MLflow.
`model.weights` may also name a saved model (a .keras file, `runs:/...`, `models:/name@alias`):
its backbone is the starting point (crackxai.models.resnet.warm_start), the head is new.

`train.distribution` spreads each step over devices or hosts (crackxai.models.distribute; README
"Scaling out"): `train.batch_size` is the global batch and `train.lr` is used as given, so the
same config trains the same model. Under multi_worker (`crackxai train_worker` on each host) only
the chief (worker 0) writes the outputs below and the MLflow run; the other workers write into a
throw-away folder and keep their own resume state in models/.train_state-worker<i>.

A killed run resumes when rerun: models/.train_state holds Keras's BackupAndRestore state per
phase, the history so far, the best checkpoint and the MLflow run id, and is removed after a
successful finish. It is discarded when the configuration or the data changed in between.

Outputs: models/model.keras (raw 0-255 RGB in, softmax over classes.json's classes out; standard
Keras layers only, so plain `keras.saving.load_model` reads it), models/model.ood.npz (its
out-of-distribution detector, crackxai.models.ood, fit on the train features with the threshold
set on val; also the run's artifact ood/model.ood.npz), models/mlflow_run.json (the run
later stages log into), reports/train_history.csv. In MLflow the run holds the same model as the
served MLflow model (`runs:/<run_id>/model`: probabilities and Grad-CAM for images of any size,
with the detector's out-of-distribution flag), registered as a new version of
`tracking.registered_model` (crackxai.tracking.registry).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import keras

from crackxai.config import Config, to_dict
from crackxai.config.entry import run_stage
from crackxai.core.entry import log
from crackxai.core.io import write_json
from crackxai.core.paths import (
    MANIFEST,
    MODEL_FILE,
    OOD_FILE,
    PROCESSED_DIR,
    RUN_FILE,
    TRAIN_HISTORY,
    TRAIN_STATE_DIR,
    project_root,
)
from crackxai.data.processed import Split
from crackxai.models import distribute
from crackxai.models.io import inference_model, save_model
from crackxai.models.ood import fit_for_model
from crackxai.models.resnet import build_model, resolve_weights
from crackxai.models.sources import is_warm_start
from crackxai.models.training import (
    Phase,
    configure_runtime,
    load_train_val,
    make_dataset,
    open_state,
    plan_phases,
    run_phases,
    write_history_csv,
)
from crackxai.tracking.keras_logger import MlflowLogger
from crackxai.tracking.registry import check_classes, gradcam_settings, log_model, model_file
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


def fit(cfg: Config, strategy: Any, plan: list[Phase], train: Split, val: Split,
        weights: str | None, state_dir: Path, history_csv: Path,
        callbacks: list) -> tuple[keras.Model, list[dict]]:
    """Build the model from `weights` (model.weights, a warm start's URI resolved to its file)
    and train it under `strategy`; returns it (BatchNorm unsynchronized again, so the saved model
    loads anywhere) and the history."""
    m, t = cfg.model, cfg.train
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        log(STAGE, f"building ResNet50 (weights={m.weights}"
                   + (f", backbone from {weights}, new head" if is_warm_start(m.weights) else "")
                   + f", {t.precision})")
        model = build_model(len(train.classes), train.images.shape[1], weights, m.dropout,
                            seed=cfg.seed)
        if replicas > 1:  # batch statistics over the global batch wherever BatchNorm trains
            distribute.synchronize_batchnorm(model)
            log(STAGE, f"{t.distribution}: {replicas} replicas, global batch {t.batch_size} "
                       f"({t.batch_size / replicas:g} per replica), lr as configured")
        # augmentation in the input pipeline (train only), not in the saved model
        train_ds = make_dataset(train, t.batch_size, shuffle_seed=cfg.seed, flip=m.augment.flip,
                                translate=m.augment.translate, augment_seed=cfg.seed)
        rows = run_phases(model, plan, distribute.shard_by_data(train_ds),
                          distribute.shard_by_data(make_dataset(val, t.batch_size)), state_dir,
                          history_csv, t.patience, callbacks=callbacks)
    distribute.synchronize_batchnorm(model, on=False)
    return model, rows


def val_metrics(rows: list[dict]) -> dict[str, Any]:
    best = min(rows, key=lambda r: r["val_loss"])
    return {"val/loss": best["val_loss"], "val/accuracy": best["val_accuracy"],
            "epochs": len(rows)}


def replica_worker(cfg: Config, strategy: Any, worker: distribute.Worker, plan: list[Phase],
                   train: Split, val: Split, weights: str | None) -> dict[str, Any]:
    """A non-chief worker: the same collective steps as the chief, its files thrown away."""
    state_dir = TRAIN_STATE_DIR.with_name(f"{TRAIN_STATE_DIR.name}-worker{worker.index}")
    fp = fingerprint(cfg, train, val)
    open_state(state_dir, fp, lambda old: None)
    write_json(state_dir / "state.json", {"fingerprint": fp})
    log(STAGE, f"worker {worker.index} of {worker.count}: the chief writes the outputs and the "
               f"MLflow run; train state in {state_dir}")
    with tempfile.TemporaryDirectory(prefix=f"crackxai-worker{worker.index}-") as scratch:
        model, rows = fit(cfg, strategy, plan, train, val, weights, state_dir,
                          Path(scratch) / TRAIN_HISTORY.name, callbacks=[])
        save_model(model, Path(scratch) / MODEL_FILE.name)  # as the chief: saving may read
    shutil.rmtree(state_dir, ignore_errors=True)
    return val_metrics(rows)


def main(cfg: Config) -> dict[str, Any]:
    """Train, save models/model.keras and return the kept epoch's val metrics."""
    import mlflow

    m, t = cfg.model, cfg.train
    strategy = distribute.make_strategy(t.distribution)  # first: before any TensorFlow op
    worker = distribute.worker_from_env() if t.distribution == "multi_worker" else \
        distribute.Worker()
    configure_runtime(t.precision, cfg.seed, t.deterministic)
    train, val = load_train_val(PROCESSED_DIR)
    size = train.images.shape[1]
    check_classes(train.classes)  # the served model's column names: before, not after, training
    log(STAGE, f"data: {len(train)} train / {len(val)} val images {size}x{size} from "
               f"{PROCESSED_DIR}, classes {train.classes} (output index = position)")
    root = project_root()  # the MLflow store's home: DVC_ROOT for queued experiments
    # A warm start's MLflow model URI becomes a local .keras file; resolve_weights fails fast on
    # unavailable weights (no network, missing file, bad URI), all before any training work.
    weights = (model_file(m.weights, resolve_tracking_uri(cfg.tracking.uri, root))
               if is_warm_start(m.weights) else m.weights)
    plan = plan_phases(resolve_weights(weights) is not None, t.epochs, t.lr,
                       t.fine_tune.unfreeze, t.fine_tune.epochs, t.fine_tune.lr)
    if not worker.is_chief:
        return replica_worker(cfg, strategy, worker, plan, train, val, weights)
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
            model, rows = fit(cfg, strategy, plan, train, val, weights, state_dir, TRAIN_HISTORY,
                              callbacks=[MlflowLogger()])
            model = inference_model(model)  # no optimizer state, in the file or in MLflow
            save_model(model, MODEL_FILE)
            write_history_csv(rows, TRAIN_HISTORY)
            log(STAGE, f"wrote {MODEL_FILE} and {TRAIN_HISTORY} ({len(rows)} epochs)")
            detector = fit_for_model(model, train.images, train.labels, val.images, t.ood_quantile,
                                     t.batch_size)
            detector.save(OOD_FILE)
            mlflow.log_artifact(str(OOD_FILE), "ood")  # beside the MLflow model, for serving
            log(STAGE, f"wrote {OOD_FILE}: out-of-distribution threshold {detector.threshold:.1f} "
                       f"(passes {t.ood_quantile:.0%} of val)")
            # the MLflow model holds the .keras file: no separate artifact copy of models/model.keras
            logged = log_model(MODEL_FILE, train.classes, val.images[:1],
                               cfg.tracking.registered_model, gradcam=gradcam_settings(cfg),
                               num_outputs=int(model.output_shape[-1]))
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
    return val_metrics(rows)


def close_attempt(old: dict, experiment_id: str) -> None:
    """Mark the MLflow run of a discarded train state (config or data changed since) KILLED:
    by its id, or by its attempt tag when the kill came before the id was recorded."""
    run_id = old.get("run_id") or (old.get("attempt")
                                   and find_attempt_run(experiment_id, old["attempt"]))
    if run_id:
        terminate_run(run_id)


if __name__ == "__main__":
    run_stage(STAGE, main)
