"""Models: the ResNet50 builder, training library, load/save/compatibility, the shared Predictor."""
