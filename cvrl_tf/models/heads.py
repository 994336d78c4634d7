"""Heads on the pooled backbone feature: the CVRL projection MLP and the two classifiers.

Each head is a `keras.Sequential` built lazily on the feature dimension. Its last Dense layer
runs in float32 so that embeddings and logits keep float32 precision under mixed_bfloat16.
"""
import keras


def _check_positive(value: int, name: str, fix: str) -> None:
    """Raises one clear ValueError unless value is a positive int."""
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive int; {fix}.")


def projection_head(num_hidden: int = 3, hidden_dim: int = 2048, output_dim: int = 128,
                    bn_momentum: float = 0.9, sync_bn: bool = False,
                    bn_epsilon: float = 1e-5, name: str = "projection_head") -> keras.Sequential:
    """The CVRL/SimCLR MLP: num_hidden x [Dense(hidden_dim) -> BN -> ReLU] -> Dense(output_dim).

    Hidden Dense layers have no bias because BN follows. The embedding is not normalized
    (the loss normalizes it).
    """
    if not isinstance(num_hidden, int) or num_hidden < 0:
        raise ValueError(f"num_hidden={num_hidden!r} must be an int >= 0 (3 in the paper).")
    _check_positive(hidden_dim, "hidden_dim", "the paper uses 2048")
    _check_positive(output_dim, "output_dim", "the paper uses 128")
    layers = []
    for i in range(num_hidden):
        layers += [
            keras.layers.Dense(hidden_dim, use_bias=False, name=f"hidden{i + 1}_dense"),
            keras.layers.BatchNormalization(momentum=bn_momentum, epsilon=bn_epsilon,
                                            synchronized=sync_bn, name=f"hidden{i + 1}_bn"),
            keras.layers.ReLU(name=f"hidden{i + 1}_relu"),
        ]
    layers.append(keras.layers.Dense(output_dim, name="embedding", dtype="float32"))
    return keras.Sequential(layers, name=name)


def linear_classifier(num_classes: int, name: str = "linear_classifier") -> keras.Sequential:
    """One Dense(num_classes) for linear evaluation (ClassifierModel L2-normalizes its input)."""
    _check_positive(num_classes, "num_classes", "pass the number of classes of the data set")
    return keras.Sequential([
        keras.layers.Dense(num_classes, name="logits", dtype="float32",
                           kernel_initializer=keras.initializers.RandomNormal(stddev=0.01)),
    ], name=name)


def finetune_classifier(num_classes: int, dropout_rate: float = 0.5,
                        name: str = "finetune_classifier") -> keras.Sequential:
    """Dropout -> Dense(num_classes) on the pooled feature, for end-to-end fine-tuning."""
    _check_positive(num_classes, "num_classes", "pass the number of classes of the data set")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate={dropout_rate!r} must be in [0, 1); 0.5 is the default.")
    return keras.Sequential([
        keras.layers.Dropout(dropout_rate, name="dropout"),
        keras.layers.Dense(num_classes, name="logits", dtype="float32",
                           kernel_initializer=keras.initializers.RandomNormal(stddev=0.01)),
    ], name=name)
