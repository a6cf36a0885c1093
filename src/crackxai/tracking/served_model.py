"""The file MLflow runs to build crackxai's served model (models from code: registry.log_model
passes this file as `python_model`, MLflow copies it into the model and executes it on load, with
the model's code/ folder, a copy of the crackxai package, on sys.path). Nothing imports it."""

import mlflow

from crackxai.tracking.serving import CrackxaiModel

mlflow.models.set_model(CrackxaiModel())
