"""Networks: 3D ResNet backbones, heads, and the CVRL / classifier models."""
from cvrl_tf.models.cvrl_model import ClassifierModel, CVRLModel, kernel_variables
from cvrl_tf.models.heads import finetune_classifier, linear_classifier, projection_head
from cvrl_tf.models.resnet3d import ResNet3D, build_backbone

__all__ = [
    "build_backbone", "ResNet3D", "projection_head", "linear_classifier",
    "finetune_classifier", "CVRLModel", "ClassifierModel", "kernel_variables",
]
