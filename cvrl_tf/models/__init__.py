"""Networks: 3D ResNet backbones, heads, and the CVRL / classifier / detection models."""
from cvrl_tf.models.cvrl_model import ClassifierModel, CVRLModel, kernel_variables
from cvrl_tf.models.detection import DetectionModel, RoIHead, roi_align, roi_head
from cvrl_tf.models.heads import finetune_classifier, linear_classifier, projection_head
from cvrl_tf.models.resnet3d import ResNet3D, build_backbone, last_stage

__all__ = [
    "build_backbone", "ResNet3D", "last_stage", "projection_head", "linear_classifier",
    "finetune_classifier", "roi_head", "RoIHead", "roi_align", "CVRLModel", "ClassifierModel",
    "DetectionModel", "kernel_variables",
]
