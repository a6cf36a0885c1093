"""The custom layers of models saved by crackxai before the model became portable.

Those models began with `crackxai>RandomFlip`, `crackxai>RandomTranslation` (augmentation active
only with training=True) and `crackxai>ResNetPreprocess`. New models use standard Keras layers
only (crackxai.models.resnet.caffe_preprocess; augmentation moved to the training input
pipeline). Registering the old classes here keeps an old models/model.keras loadable through
crackxai.models.io.load_model, with the same predictions as before; retrain for a model that
loads without crackxai.
"""

from __future__ import annotations

import keras
from keras import layers

LEGACY_LAYERS = ("crackxai>RandomFlip", "crackxai>RandomTranslation", "crackxai>ResNetPreprocess")


@keras.saving.register_keras_serializable(package="crackxai")
class ResNetPreprocess(layers.Layer):
    """`keras.applications.resnet.preprocess_input` as a layer, saved with the model."""

    def call(self, inputs):  # noqa: ANN001, ANN201 - Keras API
        return keras.applications.resnet.preprocess_input(inputs)


class _OnlyWhenTraining:
    """Keras's random image layers default to `training=True`, so a plain `model(x)` call (as
    Grad-CAM, SHAP or LIME make it) would augment. These augment only when training=True."""

    def call(self, data, training=False):  # noqa: ANN001, ANN201 - Keras API
        return super().call(data, training=training)


@keras.saving.register_keras_serializable(package="crackxai")
class RandomFlip(_OnlyWhenTraining, layers.RandomFlip):
    pass


@keras.saving.register_keras_serializable(package="crackxai")
class RandomTranslation(_OnlyWhenTraining, layers.RandomTranslation):
    pass
