"""Input pipeline: TFRecord/TFDS video -> sampled clips -> temporally consistent augmentation."""
