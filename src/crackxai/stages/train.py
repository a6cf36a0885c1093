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

Outputs: models/model.keras (raw 0-255 RGB in, softmax over classes.json's classes out),
models/mlflow_run.json (the run later stages log into), reports/train_history.csv.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from crackxai.config import Config, to_dict
from crackxai.config.entry import run_stage
from crackxai.core.entry import log
from crackxai.core.errors import DataError
from crackxai.core.io import atomic_path, write_json
from crackxai.core.paths import (
    MANIFEST,
    MODEL_FILE,
    PROCESSED_DIR,
    RUN_FILE,
    TRAIN_HISTORY,
    TRAIN_STATE_DIR,
    project_root,
)
from crackxai.data.processed import Split, load_split
from crackxai.models.io import save_model
from crackxai.models.resnet import build_model, resolve_weights, set_backbone_trainable
from crackxai.models.training import (
    HistoryLogger,
    Phase,
    ResumableEarlyStopping,
    backup_dir,
    describe,
    make_dataset,
    write_history_csv,
)
from crackxai.tracking.keras_logger import MlflowLogger
from crackxai.tracking.runs import _terminate_run

STAGE = "train"


# ----------------------------------------------------------------------------------------------
# Input pipeline
# ----------------------------------------------------------------------------------------------




def load_data(processed_dir: Path = PROCESSED_DIR) -> tuple[Split, Split]:
    train, val = load_split("train", processed_dir), load_split("val", processed_dir)
    for split in (train, val):
        if len(split) == 0:
            raise DataError(f"The {split.name} split in '{processed_dir}' is empty. Rerun "
                            "preprocess with more data or other preprocess.split fractions.")
        if split.images.dtype != np.uint8 or split.images.ndim != 4 or split.images.shape[3] != 3:
            raise DataError(f"'{processed_dir}/{split.name}_images.npy' is not uint8 (N, S, S, 3) "
                            f"(got {split.images.dtype} {split.images.shape}). Rerun preprocess.")
        if len(split.images) != len(split.labels):
            raise DataError(f"'{processed_dir}/{split.name}_images.npy' and its labels differ in "
                            "length. Rerun preprocess.")
    if len(train.classes) < 2:
        raise DataError(f"'{processed_dir}/classes.json' lists {train.classes}: a classifier "
                        "needs at least two classes.")
    return train, val


# ----------------------------------------------------------------------------------------------
# Callbacks
# ----------------------------------------------------------------------------------------------










# ----------------------------------------------------------------------------------------------
# Train state (resume after a kill)
# ----------------------------------------------------------------------------------------------




def phases(cfg: Config) -> list[Phase]:
    pretrained = resolve_weights(cfg.model.weights) is not None
    out = [Phase("phase1", cfg.train.epochs, cfg.train.lr, 0 if pretrained else None)]
    ft = cfg.train.fine_tune
    if ft.unfreeze > 0 and ft.epochs > 0:
        out.append(Phase("phase2", ft.epochs, ft.lr, ft.unfreeze))
    return out




def fingerprint(cfg: Config, train: Split, val: Split) -> str:
    """What a resumed run must share with the interrupted one: config that shapes training
    (not tracking), class list and split shapes."""
    c = to_dict(cfg)
    key = {"seed": c["seed"], "model": c["model"], "train": c["train"], "classes": train.classes,
           "shapes": [list(train.images.shape), list(val.images.shape)]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def open_state(state_dir: Path, fp: str) -> dict:
    """The interrupted run's state ({} for a fresh start); stale state is discarded."""
    state_file = state_dir / "state.json"
    if not state_file.is_file():
        shutil.rmtree(state_dir, ignore_errors=True)
        return {}
    state = json.loads(state_file.read_text())
    if state.get("fingerprint") == fp:
        return state
    log(STAGE, f"configuration or data changed since the interrupted run: discarding {state_dir}")
    if state.get("run_id"):
        _terminate_run(state["run_id"])
    shutil.rmtree(state_dir, ignore_errors=True)
    return {}




# ----------------------------------------------------------------------------------------------
# Stage
# ----------------------------------------------------------------------------------------------


def configure_runtime(cfg: Config) -> None:
    """Seeds, op determinism and the precision policy: all before any model is built."""
    keras.mixed_precision.set_global_policy(cfg.train.precision)
    keras.utils.set_random_seed(cfg.seed)
    if cfg.train.deterministic:
        tf.config.experimental.enable_op_determinism()


def fit_phase(model: keras.Model, phase: Phase, train_ds: tf.data.Dataset,
              val_ds: tf.data.Dataset, first_epoch: int, rows: list[dict], cfg: Config,
              state_dir: Path) -> None:
    set_backbone_trainable(model, phase.unfreeze)
    model.compile(optimizer=keras.optimizers.Adam(phase.lr),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model._initial_epoch = None  # noqa: SLF001 - BackupAndRestore of an earlier phase set it
    backup = keras.callbacks.BackupAndRestore(str(backup_dir(phase.name, state_dir)),
                                              double_checkpoint=True)
    callbacks = [
        HistoryLogger(rows, state_dir / "history.json", TRAIN_HISTORY),
        MlflowLogger(),
        backup,  # before early stopping: it sets the epoch a resumed run continues from
        ResumableEarlyStopping(rows, first_epoch, state_dir / phase.name / "best.weights.h5",
                               patience=cfg.train.patience),
    ]
    meta = backup_dir(phase.name, state_dir) / "training_metadata.json"
    if meta.is_file():
        epoch = json.loads(meta.read_text())["epoch"]
        log(STAGE, f"{phase.name}: resuming after epoch {epoch} from {backup.backup_dir}")
    model.fit(train_ds, validation_data=val_ds, initial_epoch=first_epoch,
              epochs=first_epoch + phase.epochs, callbacks=callbacks, shuffle=False,
              verbose=1 if sys.stdout.isatty() else 2)






def manifest_sha256(path: Path = MANIFEST) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def main(cfg: Config) -> Path:
    import mlflow

    from crackxai.tracking.runs import (
        connect,
        resolve_tracking_uri,
        start_model_run,
        write_run_file,
    )

    configure_runtime(cfg)
    train, val = load_data()
    size = train.images.shape[1]
    log(STAGE, f"data: {len(train)} train / {len(val)} val images {size}x{size} from "
               f"{PROCESSED_DIR}, classes {train.classes} (output index = position)")
    plan = phases(cfg)  # also fails fast on unavailable weights (no network, missing file)
    root = project_root()  # the MLflow store's home: DVC_ROOT for queued experiments
    uri = resolve_tracking_uri(cfg.tracking.uri, root)
    connect(uri, cfg.tracking.experiment)  # fails fast on an unreachable store

    state_dir = TRAIN_STATE_DIR
    fp = fingerprint(cfg, train, val)
    state = open_state(state_dir, fp)
    tags = {"data.manifest_sha256": manifest_sha256() or "", "train.precision": cfg.train.precision}
    run = start_model_run(cfg, root, STAGE, extra_tags={k: v for k, v in tags.items() if v},
                          run_id=state.get("run_id"))
    write_json(state_dir / "state.json", {"fingerprint": fp, "run_id": run.info.run_id})
    log(STAGE, f"MLflow run {run.info.run_id} ({'resumed' if state else 'new'}) in experiment "
               f"'{cfg.tracking.experiment}' at {mlflow.get_tracking_uri()}; "
               f"train state in {state_dir}")
    try:
        log(STAGE, f"building ResNet50 (weights={cfg.model.weights}, {cfg.train.precision})")
        model = build_model(len(train.classes), size, cfg.model.weights, cfg.model.dropout,
                            cfg.model.augment.flip, cfg.model.augment.translate, cfg.seed)
        train_ds = make_dataset(train, cfg.train.batch_size, shuffle_seed=cfg.seed)
        val_ds = make_dataset(val, cfg.train.batch_size)
        history_file = state_dir / "history.json"
        rows = json.loads(history_file.read_text()) if history_file.is_file() else []
        epoch = 0
        for phase in plan:
            done_file = state_dir / phase.name / "done.json"
            if done_file.is_file():  # finished before the interruption
                epoch = json.loads(done_file.read_text())["epoch"]
                model.load_weights(state_dir / phase.name / "done.weights.h5")
                log(STAGE, f"{phase.name}: already finished (epoch {epoch}) in {state_dir}")
                continue
            log(STAGE, describe(phase, epoch))
            fit_phase(model, phase, train_ds, val_ds, epoch, rows, cfg, state_dir)
            best = min((r for r in rows if r["epoch"] > epoch), key=lambda r: r["val_loss"])
            log(STAGE, f"{phase.name}: kept epoch {best['epoch']} (lowest val_loss "
                       f"{best['val_loss']:.4f}, val_accuracy {best['val_accuracy']:.4f})")
            epoch = rows[-1]["epoch"]
            with atomic_path(state_dir / phase.name / "done.weights.h5", ".weights.h5") as tmp:
                model.save_weights(tmp)
            write_json(done_file, {"epoch": epoch})

        save_model(model, MODEL_FILE)
        write_history_csv(rows, TRAIN_HISTORY)
        log(STAGE, f"wrote {MODEL_FILE} and {TRAIN_HISTORY} ({len(rows)} epochs)")
        mlflow.log_artifact(str(MODEL_FILE), artifact_path="model")
        write_run_file(run, RUN_FILE)
    except BaseException as exc:  # the state stays: a rerun resumes this run
        mlflow.end_run(status="KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    mlflow.end_run()
    shutil.rmtree(state_dir, ignore_errors=True)
    log(STAGE, f"logged to MLflow run {run.info.run_id}; run id in {RUN_FILE}")
    return MODEL_FILE


if __name__ == "__main__":
    run_stage(STAGE, main)
