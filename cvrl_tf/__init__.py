"""cvrl_tf: Spatiotemporal Contrastive Video Representation Learning (Qian et al., CVPR 2021)."""

__version__ = "0.1.0"
