"""Data-parallel training with tf.distribute: a strategy from a name, who writes, and the pinned
Keras shim that multi-worker training needs.

    none          the default strategy: one process, one device
    mirrored      tf.distribute.MirroredStrategy: one process, every local GPU (or `logical_cpus`
                  CPU devices, for tests and benchmarks)
    multi_worker  tf.distribute.MultiWorkerMirroredStrategy: one process per host, the cluster in
                  TF_CONFIG (`tf_config()` writes it; `crackxai train_worker` sets it and runs the
                  train stage)

The dataset's batch is the *global* batch: tf.distribute splits it across the replicas, Keras
scales each replica's loss by 1/replicas and the gradients are summed, so a step is the same step
as in one process and the learning rate stays as configured. Trained BatchNorm layers must be
`synchronized` (`synchronize_batchnorm`), else each replica keeps its own moving statistics and
the saved model holds replica 0's.

Keras 3.15's `fit` under a strategy has two faults (keras-team/keras#20585,
tensorflow/tensorflow#72388). `_maybe_symbolic_build` draws a batch from an extra iterator only
to learn its shapes: a reshuffling dataset then starts its first epoch on its *second* order, so
a mirrored run trains on other batches than a single-process one, and across workers it
all-reduces that (uint8 images, int labels) batch, which fails. `reduce_per_replica` reduces the
scalar logs of a multi-worker step with `axis=0`, which fails. And synchronized BatchNorm takes
the variance as E[x^2] - E[x]^2 (`_compute_moments_sync`), which cancels in float32 where a
channel's mean is large against its spread: such a run normalises by another variance than one
process (see `synced_moments`). `install_keras_shim` replaces those three functions (every
strategy but `none`), only for the Keras version and signatures it was written against: any
other Keras fails loudly here instead of training differently or hanging in a collective.
"""

from __future__ import annotations

import inspect
import logging
import os

import keras
import tensorflow as tf

from crackxai.core.errors import CrackxaiError
from crackxai.models.cluster import TF_CONFIG, Worker, tf_config, worker_from_env
from crackxai.models.options import DISTRIBUTIONS

__all__ = ["TF_CONFIG", "Worker", "check_shim_target", "install_keras_shim", "make_strategy",
           "shard_by_data", "synchronize_batchnorm", "tf_config", "worker_from_env"]

logger = logging.getLogger(__name__)


# What the shim was written and tested against; see install_keras_shim.
SHIM_KERAS_VERSION = "3.15.1"
SHIM_SIGNATURES = {
    "TensorFlowTrainer._maybe_symbolic_build": "(self, iterator=None, data_batch=None)",
    "reduce_per_replica": "(values, strategy, reduction)",
    "nn._compute_moments_sync": "(x, axes, keepdims)",
}


def make_strategy(name: str, logical_cpus: int = 0) -> tf.distribute.Strategy:
    """The tf.distribute strategy for `name` (DISTRIBUTIONS). Call it before any TensorFlow op:
    logical devices and the multi-worker collectives can only be set up then. `logical_cpus` > 1
    splits the CPU into that many devices (mirrored on a machine without GPUs; tests)."""
    if name not in DISTRIBUTIONS:
        raise CrackxaiError(f"Unknown distribution '{name}': use one of {', '.join(DISTRIBUTIONS)}.")
    if logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "multi_worker" and not os.environ.get(TF_CONFIG):
        raise CrackxaiError(
            f"train.distribution=multi_worker needs {TF_CONFIG} (the cluster and this host's "
            "place in it). Start each host with `crackxai train_worker --workers "
            "host1:port,host2:port --index <i> [overrides]`, which sets it.")
    install_keras_shim()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus or tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    worker_from_env()  # a malformed TF_CONFIG fails here, in one paragraph
    return tf.distribute.MultiWorkerMirroredStrategy()


def shard_by_data(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Every worker reads the same batches and keeps its replicas' slice of each (DATA sharding):
    the steps are those of one process. The input here is one in-memory array, not files, so the
    FILE policy has nothing to shard."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def synchronize_batchnorm(model: keras.Model, on: bool = True) -> int:
    """Sets `synchronized` on every BatchNormalization layer (batch statistics all-reduced across
    replicas when they train); returns how many. Turn it off again before saving: the saved model
    then loads on any backend."""
    layers = [layer for layer in model._flatten_layers()  # noqa: SLF001 - nested models too
              if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.synchronized = on
    return len(layers)



# ---------------------------------------------------------------------------------------------
# The Keras shim (mirrored and multi_worker)
# ---------------------------------------------------------------------------------------------


def _trainer_module():
    from keras.src.backend.tensorflow import trainer

    return trainer


def _nn_module():
    from keras.src.backend.tensorflow import nn

    return nn


def check_shim_target() -> None:
    """Fails unless Keras is the version, and the two patched functions have the signatures, the
    shim was written for."""
    trainer = _trainer_module()
    found = {
        "TensorFlowTrainer._maybe_symbolic_build":
            str(inspect.signature(trainer.TensorFlowTrainer._maybe_symbolic_build)),  # noqa: SLF001
        "reduce_per_replica": str(inspect.signature(trainer.reduce_per_replica)),
        "nn._compute_moments_sync": str(inspect.signature(_nn_module()._compute_moments_sync)),  # noqa: SLF001
    }
    if keras.__version__ != SHIM_KERAS_VERSION or found != SHIM_SIGNATURES:
        raise CrackxaiError(
            f"train.distribution=mirrored|multi_worker patches three Keras functions written for Keras "
            f"{SHIM_KERAS_VERSION} {SHIM_SIGNATURES}, but this is Keras {keras.__version__} "
            f"{found}. Check whether keras-team/keras#20585 is fixed in this version; if so "
            "drop the shim (crackxai.models.distribute), else update it and its tests. Until "
            "then use train.distribution=none.")



def synced_moments(x: tf.Tensor, axes: list[int], keepdims: bool) -> tuple[tf.Tensor, tf.Tensor]:
    """Mean and variance of `x` over `axes` and over every replica's batch, as one process's
    `tf.nn.moments` computes them over the whole batch: the global mean first, then the mean
    squared deviation from it (two all-reduces in turn).

    Keras 3.15's synchronized BatchNorm takes E[x^2] - E[x]^2 from one all-reduce: in float32
    that cancels catastrophically where a channel's mean is large against its spread (as may happen in a
    random-init ResNet50), so mirrored and multi-worker runs normalised by another
    variance than one process (0.0 or 0.125 where it is 1e-4:
    test_synchronized_batchnorm_variance_is_the_one_process_variance)."""
    ctx = tf.distribute.get_replica_context()
    if not ctx:
        return tf.nn.moments(x, axes, keepdims=keepdims)
    count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(
        tf.ones_like(x), axis=axes, keepdims=True))
    total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(x, axis=axes, keepdims=True))
    mean = tf.math.divide_no_nan(total, count)
    squares = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(
        tf.math.squared_difference(x, tf.stop_gradient(mean)), axis=axes, keepdims=True))
    variance = tf.math.divide_no_nan(squares, count)
    if not keepdims:
        mean, variance = tf.squeeze(mean, axes), tf.squeeze(variance, axes)
    return mean, variance


def install_keras_shim() -> None:
    """Patches Keras 3.15's TensorFlow trainer for tf.distribute strategies (idempotent)."""
    check_shim_target()
    trainer = _trainer_module()
    if getattr(trainer.reduce_per_replica, "_crackxai_shim", False):
        return
    original_reduce = trainer.reduce_per_replica

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Upstream draws a batch from a fresh iterator only to learn its shapes: that advances a
        # reshuffling dataset's seed (the epochs then differ from one process's) and, across
        # workers, all-reduces uint8 images (a collective that fails). The element spec has
        # the shapes and dtypes, without iterating.
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            data_batch = iterator.data_adapter.get_tf_dataset().element_spec
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        # Upstream reduces every multi-worker value with axis=0; scalar logs (loss, accuracy)
        # have no axis 0. Reduce scalars whole, everything else as upstream does.
        if (reduction in ("mean", "auto")
                and trainer._collective_all_reduce_multi_worker(strategy)):  # noqa: SLF001
            def _reduce(v):
                if v.shape.rank == 0 or (
                        isinstance(v, tf.distribute.DistributedValues) and v.values[0].shape.rank == 0):
                    return strategy.reduce("MEAN", v, axis=None)
                return strategy.reduce("MEAN", v, axis=0)

            return tf.nest.map_structure(_reduce, values)
        return original_reduce(values, strategy, reduction)

    reduce_per_replica._crackxai_shim = True  # noqa: SLF001
    trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build  # noqa: SLF001
    trainer.reduce_per_replica = reduce_per_replica
    _nn_module()._compute_moments_sync = synced_moments  # noqa: SLF001
    logger.info(f"installed the multi-worker shim for Keras {keras.__version__} "
                "(keras-team/keras#20585)")
