"""A Keras callback that logs the per-epoch metrics into the active MLflow run."""

from __future__ import annotations

import keras

MLFLOW_METRICS = {"loss": "train/loss", "accuracy": "train/accuracy",
                  "val_loss": "val/loss", "val_accuracy": "val/accuracy"}


class MlflowLogger(keras.callbacks.Callback):
    """train/loss, train/accuracy, val/loss, val/accuracy into the active MLflow run, step=epoch."""

    def on_epoch_end(self, epoch, logs=None):
        import mlflow

        mlflow.log_metrics({name: float(logs[key]) for key, name in MLFLOW_METRICS.items()},
                           step=epoch + 1)
