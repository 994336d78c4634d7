"""Export a trained backbone as a TensorFlow SavedModel: clips in, pooled features out.

    python -m cvrl_tf.export --checkpoint gs://BUCKET/runs/EXP --output gs://BUCKET/runs/EXP/export

--checkpoint is a model_dir (its latest checkpoint is used) or one checkpoint prefix
(model_dir/ckpt-1000). The backbone is rebuilt from model_dir/backbone.json (the
build_backbone keyword arguments the trainer writes; --backbone_json overrides) and only the
checkpoint's `backbone` is restored. The SavedModel needs only TensorFlow to load:

    model = tf.saved_model.load(DIR)
    model.signatures["serving_default"](video=clips)["features"]  # [B, F] float32

Signatures (every one maps `video` [B, T, H, W, 3] to {'features': [B, F] float32}):
- `serving_float32`: float32 pixels in [0, 1] (what cvrl_tf.data.build_dataset yields).
- `serving_uint8`: uint8 pixels, scaled to [0, 1] as the input pipeline does (x / 255).
- `serving_default`: the one picked by --default_signature (float32 unless told otherwise).
H and W are free; the backbone pools globally. Use the crop size it was trained with:
cvrl_tf_export.json records it under "clip" ({"num_frames", "stride", "crop_size"}, copied from
model_dir/clip.json, which training writes), and cvrl_tf.features uses it by default.
"""
from __future__ import annotations

if __name__ == "__main__":  # A command: settle the process before TensorFlow starts.
    from cvrl_tf.runtime import cli as _cli
    _cli.start()

# pylint: disable=wrong-import-position
import argparse
import json
import os
from typing import Sequence

import keras
import tensorflow as tf

from cvrl_tf.training import checkpoints
from cvrl_tf.models import build_backbone
from cvrl_tf.runtime import cli

METADATA_JSON = "cvrl_tf_export.json"  # Written next to saved_model.pb; loaders ignore it.
SIGNATURES = ("float32", "uint8")
_FORCED = {"sync_bn": False, "return_endpoints": False}  # Inference needs neither.


def read_export_clip(saved_model_dir: str) -> dict | None:
    """The training clip recorded in an export's cvrl_tf_export.json, or None."""
    path = os.path.join(saved_model_dir, METADATA_JSON)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        try:
            clip = json.load(f).get("clip")
        except (json.JSONDecodeError, AttributeError) as e:
            raise ValueError(f"Export metadata {path} is not a JSON object ({e}).") from e
    return None if clip is None else checkpoints.check_clip(clip, path)


def load_backbone(checkpoint: str, backbone_json: str | None = None) -> keras.Model:
    """Rebuilds the backbone from backbone.json and restores only `backbone` from the checkpoint."""
    prefix, model_dir = checkpoints.resolve(checkpoint)
    json_path = backbone_json or os.path.join(model_dir, checkpoints.BACKBONE_JSON)
    kwargs = checkpoints.read_backbone_json(json_path)
    # Free time and space (the weights do not depend on them): clips of any length/size.
    channels = (kwargs.get("input_shape") or [3])[-1]
    backbone = build_backbone(**{**kwargs, **_FORCED,
                                 "input_shape": [None, None, None, channels]})
    checkpoints.restore_backbone(backbone, prefix, "--checkpoint",
                                 fix=f"check the config in {json_path} (--backbone_json)")
    return backbone


def _features_fn(backbone: keras.Model, dtype: tf.DType):
    """A tf.function video [B, T, H, W, C] of `dtype` -> {'features': [B, F] float32}."""
    spec = tf.TensorSpec([None, None, None, None, backbone.input_shape[-1]], dtype, name="video")

    @tf.function(input_signature=[spec])
    def serve(video):
        if dtype == tf.uint8:  # Same scaling as the input pipeline: x / 255 in float32.
            video = tf.cast(video, tf.float32) / 255.0
        features = backbone(video, training=False)
        return {"features": tf.cast(features, tf.float32)}

    return serve


def export_saved_model(backbone: keras.Model, output_dir: str, default_signature: str = "float32",
                       metadata: dict | None = None) -> dict:
    """Writes `backbone` as a SavedModel with the float32, uint8 and default signatures."""
    if default_signature not in SIGNATURES:
        raise ValueError(f"default_signature={default_signature!r} must be one of {SIGNATURES}.")
    module = tf.Module()
    module.backbone = backbone
    fns = {name: _features_fn(backbone, tf.as_dtype(name)) for name in SIGNATURES}
    module.serving_float32, module.serving_uint8 = fns["float32"], fns["uint8"]
    signatures = {f"serving_{name}": fn for name, fn in fns.items()}
    signatures["serving_default"] = fns[default_signature]
    tf.saved_model.save(module, output_dir, signatures=signatures)
    info = dict(metadata or {}, default_signature=default_signature,
                signatures=sorted(signatures), feature_dim=int(backbone.output_shape[-1]))
    with tf.io.gfile.GFile(os.path.join(output_dir, METADATA_JSON), "w") as f:
        json.dump(info, f, indent=2)
    return info


def export(checkpoint: str, output_dir: str, backbone_json: str | None = None,
           default_signature: str = "float32") -> dict:
    """Checkpoint (or model_dir) -> SavedModel in output_dir; returns the export metadata."""
    prefix, model_dir = checkpoints.resolve(checkpoint)
    json_path = backbone_json or os.path.join(model_dir, checkpoints.BACKBONE_JSON)
    backbone = load_backbone(prefix, json_path)
    metadata = {"checkpoint": prefix,
                "backbone_config": checkpoints.read_backbone_json(json_path)}
    clip = checkpoints.read_clip_json(model_dir)
    if clip is not None:
        metadata["clip"] = clip
    return export_saved_model(backbone, output_dir, default_signature, metadata=metadata)


@cli.guard
def main(argv: Sequence[str] | None = None) -> dict:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="model_dir or checkpoint prefix")
    parser.add_argument("--output", required=True, help="SavedModel directory to write")
    parser.add_argument("--backbone_json", default=None,
                        help="build_backbone kwargs (default: backbone.json in model_dir)")
    parser.add_argument("--default_signature", choices=SIGNATURES, default="float32",
                        help="input dtype of serving_default (both dtypes are always exported)")
    args = parser.parse_args(argv)
    try:
        info = export(args.checkpoint, args.output, args.backbone_json, args.default_signature)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f"export: error: {e}\n")
    print(f"Exported {info['checkpoint']} to {args.output}: feature_dim={info['feature_dim']}, "
          f"signatures {', '.join(info['signatures'])} (default: {args.default_signature}).")
    clip = info.get("clip")
    print(f"Training clip: {clip['num_frames']} frames, stride {clip['stride']}, crop "
          f"{clip['crop_size']} (cvrl_tf.features uses it by default)." if clip else
          f"No {checkpoints.CLIP_JSON} next to the checkpoint: the export records no training "
          f"clip.")
    return info


if __name__ == "__main__":
    main()
