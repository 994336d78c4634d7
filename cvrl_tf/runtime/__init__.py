"""How cvrl_tf meets its process and its platform: the settings a command makes before
TensorFlow starts (`tune_process`), the command-line conventions every command shares
(`cli`), and the one home of the TensorFlow and gin internals cvrl_tf relies on
(`internals`, imported on its own: it loads TensorFlow)."""
from cvrl_tf.runtime.process import tune_process  # noqa: F401  (no TensorFlow import)
