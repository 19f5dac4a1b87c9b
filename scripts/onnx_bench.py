#!/usr/bin/env python3
"""ONNX Runtime baseline for castream's CPU kernels.

Rebuilds, as an ONNX graph (opset 17), exactly the network stored in one of our checkpoints
(`<name>.safetensors` + `<name>.safetensors.json`), runs it with ONNX Runtime on the CPU and
prints its throughput, so that the Rust benchmark can state how fast our candle kernels are
relative to an optimised runtime on the same architecture, weights and input.

    python3 scripts/onnx_bench.py CKPT.safetensors --batch 64 --size 64 [--threads 2]
        [--warmup 2] [--runs 10] [--check INPUT.bin LOGITS.bin] [--save-onnx out.onnx] [--json]
    python3 scripts/onnx_bench.py CKPT.safetensors ... --json --serve   # timings on request
    python3 scripts/onnx_bench.py --self-test

`--json` prints exactly one JSON line on stdout (everything else goes to stderr) so that a caller
can parse stdout as a whole. `--check` compares the ONNX model's logits on a given input with the
logits our Rust code wrote, and exits with status 1 if they disagree. `--serve` (with `--json`)
answers timing requests instead, one JSON line each, so that a caller can alternate ORT's runs
with its own and both see the same machine state. `--self-test` writes tiny
random checkpoints and checks the ONNX graph against the plain numpy forward pass at the bottom
of this file, which shares only the config parsing and the eps constants with the graph builder.

Only `numpy`, `onnx` and `onnxruntime` are needed (scripts/requirements-bench.txt); the
safetensors format is simple enough to read and write here, which keeps torch and the
`safetensors` package out of the way.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

OPSET = 17
BN_EPS = 1e-5  # torch.nn.BatchNorm2d's default, as in torchvision's ResNets.
LN_EPS = 1e-6  # timm's ConvNeXt LayerNorms.

RESNETS = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet34": ("basic", [3, 4, 6, 3]), "resnet50": ("bottleneck", [3, 4, 6, 3])}
CONVNEXTS = {"convnext-tiny": (96, [3, 3, 9, 3]), "convnext-small": (96, [3, 3, 27, 3]), "convnext-base": (128, [3, 3, 27, 3])}


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

# safetensors dtype names -> little-endian numpy dtypes. BF16 has no numpy dtype and is widened
# by hand below.
_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file; floating tensors come back as float32 (the Rust loader
    also converts f16/bf16/f64 to f32), integer ones (BatchNorm's `num_batches_tracked`) as is.
    Format: u64 little-endian header length, JSON header {name: {dtype, shape, data_offsets}},
    then the raw little-endian data, offsets relative to the end of the header."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    data = memoryview(blob)[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw, shape, dtype = data[begin:end], tuple(info["shape"]), info["dtype"]
        if dtype == "BF16":
            arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif dtype in _ST_DTYPES:
            arr = np.frombuffer(raw, dtype=_ST_DTYPES[dtype])
        else:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        arr = arr.reshape(shape)
        out[name] = arr.astype(np.float32) if arr.dtype.kind == "f" else arr.copy()
    return out


def write_safetensors(path: str, tensors: dict[str, np.ndarray]) -> None:
    """The inverse of `read_safetensors`, for the self-test's checkpoints (f32 and i64 only)."""
    names = {np.dtype("<f4"): "F32", np.dtype("<i8"): "I64"}
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        arr = arr.astype(arr.dtype.newbyteorder("<"))
        raw = arr.tobytes()
        header[name] = {"dtype": names[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes with spaces
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))


@dataclass
class Config:
    """The sidecar's `config`, with the defaults filled in the way the Rust `BackboneConfig` does."""

    arch: str
    num_classes: int
    stem: str  # "imagenet" | "small"
    width: int  # base_width, or the published model's
    depths: list[int]  # blocks per stage
    kernels: str  # which Rust kernels produced the checkpoint's numbers; informative only
    norm: str = "layer"  # ConvNeXt's norms: "layer" (timm) or "batch" (BatchNorm2d, the head keeps LayerNorm)

    @staticmethod
    def from_json(c: dict) -> "Config":
        arch = c["arch"]
        if arch in RESNETS:
            default_width, default_depths = 64, RESNETS[arch][1]
        elif arch in CONVNEXTS:
            default_width, default_depths = CONVNEXTS[arch]
        else:
            raise ValueError(f"unknown arch {arch!r} (expected one of {sorted(RESNETS) + sorted(CONVNEXTS)})")
        stem = c.get("stem") or "imagenet"
        if stem not in ("imagenet", "small"):
            raise ValueError(f"unknown stem {stem!r} (expected imagenet or small)")
        width = c.get("base_width") or default_width
        depths = list(c.get("depths") or default_depths)
        if len(depths) != 4 or min(depths) < 1:
            raise ValueError(f"depths must be 4 positive ints, got {depths}")
        norm = c.get("norm") or "layer"
        if norm not in ("layer", "batch"):
            raise ValueError(f"unknown norm {norm!r} (expected layer or batch)")
        return Config(arch, int(c["num_classes"]), stem, int(width), depths, c.get("kernels") or "fast", norm)

    def to_json(self) -> dict:
        out = {"arch": self.arch, "num_classes": self.num_classes, "stem": self.stem, "base_width": self.width,
               "depths": self.depths if self.arch in CONVNEXTS else None, "kernels": self.kernels}
        if self.norm != "layer":
            out["norm"] = self.norm
        return out

    def describe(self) -> str:
        return f"{self.arch} ({self.num_classes} classes, {self.stem} stem, base width {self.width}, depths {self.depths})"


def load_checkpoint(path: str) -> tuple[Config, dict[str, np.ndarray]]:
    sidecar = path + ".json"
    if not os.path.exists(sidecar):
        raise FileNotFoundError(f"{path}: no sidecar {sidecar} (it holds the architecture)")
    with open(sidecar) as f:
        config = Config.from_json(json.load(f)["config"])
    return config, read_safetensors(path)


# ---------------------------------------------------------------------------------------------
# ONNX graph
# ---------------------------------------------------------------------------------------------


class GraphBuilder:
    """Accumulates nodes and initializers, and takes every parameter by name from the checkpoint
    so that, at the end, a tensor the graph never used (a layout mistake, or the wrong
    checkpoint) is an error, as it is for the Rust loader."""

    def __init__(self, weights: dict[str, np.ndarray]):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.weights, self.used = weights, set()
        self.nodes, self.initializers, self._n = [], [], 0

    def param(self, name: str, shape: tuple) -> np.ndarray:
        if name not in self.weights:
            raise ValueError(f"the checkpoint has no tensor {name!r}, which the architecture needs")
        arr = self.weights[name]
        if tuple(arr.shape) != tuple(shape):
            raise ValueError(f"tensor {name!r} has shape {tuple(arr.shape)}, the architecture needs {tuple(shape)}")
        self.used.add(name)
        return arr

    def const(self, arr: np.ndarray, hint: str) -> str:
        name = f"{hint}#{len(self.initializers)}"
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        self._n += 1
        out = f"{op_type.lower()}_{self._n}"
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=f"n{self._n}_{op_type}", **attrs))
        return out

    def unused(self) -> list[str]:
        # BatchNorm's step counter only matters to training; the Rust loader ignores it too.
        return sorted(k for k in self.weights if k not in self.used and not k.endswith("num_batches_tracked"))

    # -- layers ------------------------------------------------------------------------------

    def conv(self, x: str, weight: np.ndarray, bias: np.ndarray | None, stride: int, pad: int, groups: int, hint: str) -> str:
        k = weight.shape[2:]
        inputs = [x, self.const(weight, hint + ".weight")] + ([self.const(bias, hint + ".bias")] if bias is not None else [])
        return self.op("Conv", inputs, kernel_shape=list(k), strides=[stride, stride], pads=[pad] * 4, group=groups)

    def conv_bn(self, x: str, conv: str, bn: str, shape: tuple, stride: int) -> str:
        """A bias-free conv followed by an eval-mode BatchNorm, folded into one conv with a bias:
        BN(conv(x, W)) = conv(x, W * s) + (beta - mean * s), s = gamma / sqrt(var + eps). This
        is what a deployment does; folding in float64 keeps the rounding below f32's."""
        w = self.param(conv + ".weight", shape).astype(np.float64)
        c = shape[0]
        gamma, beta, mean, var = (self.param(f"{bn}.{p}", (c,)).astype(np.float64) for p in ("weight", "bias", "running_mean", "running_var"))
        scale = gamma / np.sqrt(var + BN_EPS)
        return self.conv(x, w * scale[:, None, None, None], beta - mean * scale, stride, shape[2] // 2, 1, conv)

    def linear_last(self, x: str, name: str, c_in: int, c_out: int) -> str:
        """torch's Linear on the last axis of an N-d tensor: MatMul by W^T, then add the bias."""
        w = self.param(name + ".weight", (c_out, c_in))
        b = self.param(name + ".bias", (c_out,))
        return self.op("Add", [self.op("MatMul", [x, self.const(w.T, name + ".weight_t")]), self.const(b, name + ".bias")])

    def gemm(self, x: str, name: str, c_in: int, c_out: int) -> str:
        """The classifier on (N, C): Gemm with the torch layout (transB=1)."""
        w = self.param(name + ".weight", (c_out, c_in))
        b = self.param(name + ".bias", (c_out,))
        return self.op("Gemm", [x, self.const(w, name + ".weight"), self.const(b, name + ".bias")], transB=1)

    def layer_norm_last(self, x: str, name: str, c: int) -> str:
        w, b = self.param(name + ".weight", (c,)), self.param(name + ".bias", (c,))
        return self.op("LayerNormalization", [x, self.const(w, name + ".weight"), self.const(b, name + ".bias")], axis=-1, epsilon=LN_EPS)

    def layer_norm_channels(self, x: str, name: str, c: int) -> str:
        """timm's LayerNorm2d (normalise over C of NCHW): to channels-last, LayerNormalization on
        the last axis, back. ORT's transpose optimiser removes what it can of the transposes."""
        y = self.op("Transpose", [x], perm=[0, 2, 3, 1])
        return self.op("Transpose", [self.layer_norm_last(y, name, c)], perm=[0, 3, 1, 2])

    def norm_channels(self, x: str, name: str, c: int, norm: str) -> str:
        """A ConvNeXt norm over C of NCHW: LayerNorm2d, or eval-mode BatchNormalization."""
        if norm == "layer":
            return self.layer_norm_channels(x, name, c)
        stats = [self.const(self.param(f"{name}.{p}", (c,)), f"{name}.{p}") for p in ("weight", "bias", "running_mean", "running_var")]
        return self.op("BatchNormalization", [x] + stats, epsilon=BN_EPS)

    def gelu(self, x: str) -> str:
        """Exact GELU, 0.5 x (1 + erf(x / sqrt 2)), spelled the way torch exports it so that
        ORT's GeluFusion recognises it and runs one fused kernel (opset 20's Gelu would need a
        newer opset than the one we pin)."""
        e = self.op("Erf", [self.op("Div", [x, self.const(np.array(math.sqrt(2.0)), "sqrt2")])])
        y = self.op("Mul", [x, self.op("Add", [e, self.const(np.array(1.0), "one")])])
        return self.op("Mul", [y, self.const(np.array(0.5), "half")])


def _resnet(g: GraphBuilder, cfg: Config, x: str) -> str:
    """torchvision's ResNet (v1.5: a bottleneck strides on its 3x3 conv)."""
    block, _ = RESNETS[cfg.arch]
    w = cfg.width
    k, s = (7, 2) if cfg.stem == "imagenet" else (3, 1)
    x = g.op("Relu", [g.conv_bn(x, "conv1", "bn1", (w, 3, k, k), s)])
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c_in = w
    for i, depth in enumerate(cfg.depths):
        planes = w << i
        for j in range(depth):
            name, stride = f"layer{i + 1}.{j}", (2 if i > 0 and j == 0 else 1)
            if block == "bottleneck":
                c_out = 4 * planes
                y = g.op("Relu", [g.conv_bn(x, f"{name}.conv1", f"{name}.bn1", (planes, c_in, 1, 1), 1)])
                y = g.op("Relu", [g.conv_bn(y, f"{name}.conv2", f"{name}.bn2", (planes, planes, 3, 3), stride)])
                y = g.conv_bn(y, f"{name}.conv3", f"{name}.bn3", (c_out, planes, 1, 1), 1)
            else:
                c_out = planes
                y = g.op("Relu", [g.conv_bn(x, f"{name}.conv1", f"{name}.bn1", (planes, c_in, 3, 3), stride)])
                y = g.conv_bn(y, f"{name}.conv2", f"{name}.bn2", (planes, planes, 3, 3), 1)
            if stride != 1 or c_in != c_out:
                x = g.conv_bn(x, f"{name}.downsample.0", f"{name}.downsample.1", (c_out, c_in, 1, 1), stride)
            x = g.op("Relu", [g.op("Add", [y, x])])
            c_in = c_out
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
    return g.gemm(x, "fc", c_in, cfg.num_classes)


def _convnext(g: GraphBuilder, cfg: Config, x: str) -> str:
    """timm's ConvNeXt (conv_mlp=False: the MLP runs channels-last as Linear layers)."""
    dims = [cfg.width << i for i in range(4)]
    p = 4 if cfg.stem == "imagenet" else 2
    x = g.conv(x, g.param("stem.0.weight", (dims[0], 3, p, p)), g.param("stem.0.bias", (dims[0],)), p, 0, 1, "stem.0")
    x = g.norm_channels(x, "stem.1", dims[0], cfg.norm)
    for i, depth in enumerate(cfg.depths):
        c = dims[i]
        if i > 0:
            ds = f"stages.{i}.downsample"
            x = g.norm_channels(x, ds + ".0", dims[i - 1], cfg.norm)
            x = g.conv(x, g.param(ds + ".1.weight", (c, dims[i - 1], 2, 2)), g.param(ds + ".1.bias", (c,)), 2, 0, 1, ds + ".1")
        for j in range(depth):
            name = f"stages.{i}.blocks.{j}"
            y = g.conv(x, g.param(name + ".conv_dw.weight", (c, 1, 7, 7)), g.param(name + ".conv_dw.bias", (c,)), 1, 3, c, name + ".conv_dw")
            if cfg.norm == "layer":
                y = g.layer_norm_last(g.op("Transpose", [y], perm=[0, 2, 3, 1]), name + ".norm", c)
            else:
                y = g.op("Transpose", [g.norm_channels(y, name + ".norm", c, cfg.norm)], perm=[0, 2, 3, 1])
            y = g.gelu(g.linear_last(y, name + ".mlp.fc1", c, 4 * c))
            y = g.linear_last(y, name + ".mlp.fc2", 4 * c, c)
            y = g.op("Mul", [y, g.const(g.param(name + ".gamma", (c,)), name + ".gamma")])
            x = g.op("Add", [g.op("Transpose", [y], perm=[0, 3, 1, 2]), x])
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
    x = g.layer_norm_last(x, "head.norm", dims[3])
    return g.gemm(x, "head.fc", dims[3], cfg.num_classes)


def check_input_size(cfg: Config, size: int) -> None:
    """Refuse sizes that would shrink a feature map to nothing (ORT's error would be obscure)."""
    h = size
    if cfg.arch in RESNETS:
        h = (h + 2 * (3 if cfg.stem == "imagenet" else 1) - (7 if cfg.stem == "imagenet" else 3)) // (2 if cfg.stem == "imagenet" else 1) + 1
        h = (h - 1) // 2 + 1  # max-pool
        for _ in range(3):
            h = (h - 1) // 2 + 1
    else:
        h //= 4 if cfg.stem == "imagenet" else 2
        for _ in range(3):
            h //= 2
    if h < 1:
        raise ValueError(f"--size {size} is too small for {cfg.describe()}: the last stage would be empty")


def build_model(cfg: Config, weights: dict[str, np.ndarray], batch: int, size: int):
    """The ONNX model of `cfg` with `weights`, for a fixed (batch, 3, size, size) f32 input named
    `input` and (batch, num_classes) logits named `logits`. Shapes are static so that ORT can
    plan memory and pick kernels for exactly the benchmarked shape."""
    import onnx
    from onnx import TensorProto, helper

    check_input_size(cfg, size)
    g = GraphBuilder(weights)
    out = (_resnet if cfg.arch in RESNETS else _convnext)(g, cfg, "input")
    left = g.unused()
    if left:
        raise ValueError(f"the checkpoint holds tensors that {cfg.describe()} does not use: {left[:12]}{' …' if len(left) > 12 else ''}")
    g.nodes.append(helper.make_node("Identity", [out], ["logits"], name="logits"))
    graph = helper.make_graph(
        g.nodes,
        f"castream_{cfg.arch}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, cfg.num_classes])],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="castream onnx_bench")
    model.ir_version = min(model.ir_version, 8)  # IR 8 is opset 17's; older ORT builds reject newer IRs
    onnx.checker.check_model(model)
    return model


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def make_session(model, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: keep stdout/stderr readable
    return ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])


def bench_input(batch: int, size: int) -> np.ndarray:
    """The benchmark's input: deterministic, so that every run and tool sees the same data."""
    return np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)


def time_runs(session, x: np.ndarray, warmup: int, runs: int) -> list[float]:
    """Milliseconds per `session.run` on the whole batch, after `warmup` untimed runs."""
    feed = {"input": x}
    for _ in range(warmup):
        session.run(["logits"], feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(["logits"], feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def serve(session, x: np.ndarray, warmup: int) -> int:
    """`--serve`: one line per request on stdin (a run count), one JSON line per answer."""
    time_runs(session, x, warmup, 0)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        try:
            runs = int(line)
        except ValueError:
            raise ValueError(f"--serve: expected a run count per line, got {line.strip()!r}")
        if runs < 1:
            raise ValueError(f"--serve: the run count must be positive, got {runs}")
        print(json.dumps({"median_ms": round(statistics.median(time_runs(session, x, 0, runs)), 4)}), flush=True)
    return 0


def read_f32(path: str, shape: tuple) -> np.ndarray:
    arr = np.fromfile(path, dtype="<f4")
    if arr.size != math.prod(shape):
        raise ValueError(f"{path}: {arr.size} f32 values, expected {math.prod(shape)} for shape {shape}")
    return arr.reshape(shape).astype(np.float32)


def check_logits(session, input_path: str, logits_path: str, batch: int, size: int, num_classes: int) -> tuple[bool, float, float]:
    """Runs the model on the Rust code's input and compares with its logits: (ok, max |diff|,
    tolerance). The tolerance, 1e-3 (1 + max |logit|), allows for f32 summation-order
    differences between kernels over a deep network, not for a different network."""
    x = read_f32(input_path, (batch, 3, size, size))
    expected = read_f32(logits_path, (batch, num_classes))
    (got,) = session.run(["logits"], {"input": x})
    diff = float(np.max(np.abs(got.astype(np.float64) - expected)))
    tol = 1e-3 * (1.0 + float(np.max(np.abs(expected))))
    return diff <= tol, diff, tol


# ---------------------------------------------------------------------------------------------
# Independent numpy forward pass (self-test only)
#
# Written plainly from the architecture descriptions rather than from the graph builder above:
# float64, BatchNorm applied as a normalisation (not folded), convolutions as im2col patches
# contracted with einsum, LayerNorm/GELU from their formulas. Agreement with ORT to ~1e-4 is
# the evidence that the ONNX graph computes the right network.
# ---------------------------------------------------------------------------------------------


def np_conv2d(x, w, b=None, stride=1, pad=0, groups=1):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    assert c == cg * groups and o % groups == 0
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    patches = np.empty((n, c, kh, kw, ho, wo))
    for i in range(kh):
        for j in range(kw):
            patches[:, :, i, j] = xp[:, :, i : i + stride * ho : stride, j : j + stride * wo : stride]
    og = o // groups
    out = np.concatenate(
        [np.einsum("nckluv,ockl->nouv", patches[:, g * cg : (g + 1) * cg], w[g * og : (g + 1) * og]) for g in range(groups)], axis=1
    )
    return out if b is None else out + b[None, :, None, None]


def np_batch_norm(x, p, name):
    mean, var = p[name + ".running_mean"], p[name + ".running_var"]
    xhat = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + BN_EPS)
    return xhat * p[name + ".weight"][None, :, None, None] + p[name + ".bias"][None, :, None, None]


def np_max_pool_3x3_s2_p1(x):
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    out = np.full((n, c, ho, wo), -np.inf)
    for i in range(3):
        for j in range(3):
            out = np.maximum(out, xp[:, :, i : i + 2 * ho : 2, j : j + 2 * wo : 2])
    return out


def np_layer_norm(x, weight, bias, axis):
    mean = x.mean(axis=axis, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axis, keepdims=True)
    shape = [1] * x.ndim
    shape[axis] = -1
    return (x - mean) / np.sqrt(var + LN_EPS) * weight.reshape(shape) + bias.reshape(shape)


_erf = np.vectorize(math.erf)


def np_gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def np_resnet(cfg: Config, p, x):
    relu = lambda t: np.maximum(t, 0.0)
    big = cfg.stem == "imagenet"
    x = relu(np_batch_norm(np_conv2d(x, p["conv1.weight"], stride=2 if big else 1, pad=3 if big else 1), p, "bn1"))
    x = np_max_pool_3x3_s2_p1(x)
    for i, depth in enumerate(cfg.depths):
        for j in range(depth):
            q = f"layer{i + 1}.{j}"
            stride = 2 if (i > 0 and j == 0) else 1
            if cfg.arch == "resnet50":
                y = relu(np_batch_norm(np_conv2d(x, p[q + ".conv1.weight"]), p, q + ".bn1"))
                y = relu(np_batch_norm(np_conv2d(y, p[q + ".conv2.weight"], stride=stride, pad=1), p, q + ".bn2"))
                y = np_batch_norm(np_conv2d(y, p[q + ".conv3.weight"]), p, q + ".bn3")
            else:
                y = relu(np_batch_norm(np_conv2d(x, p[q + ".conv1.weight"], stride=stride, pad=1), p, q + ".bn1"))
                y = np_batch_norm(np_conv2d(y, p[q + ".conv2.weight"], pad=1), p, q + ".bn2")
            if q + ".downsample.0.weight" in p:
                x = np_batch_norm(np_conv2d(x, p[q + ".downsample.0.weight"], stride=stride), p, q + ".downsample.1")
            x = relu(y + x)
    pooled = x.mean(axis=(2, 3))
    return pooled @ p["fc.weight"].T + p["fc.bias"]


def np_convnext(cfg: Config, p, x):
    patch = 4 if cfg.stem == "imagenet" else 2
    x = np_conv2d(x, p["stem.0.weight"], p["stem.0.bias"], stride=patch)
    norm = (lambda t, q: np_batch_norm(t, p, q)) if cfg.norm == "batch" else (lambda t, q: np_layer_norm(t, p[q + ".weight"], p[q + ".bias"], axis=1))
    x = norm(x, "stem.1")
    for i, depth in enumerate(cfg.depths):
        if i > 0:
            q = f"stages.{i}.downsample"
            x = norm(x, q + ".0")
            x = np_conv2d(x, p[q + ".1.weight"], p[q + ".1.bias"], stride=2)
        for j in range(depth):
            q = f"stages.{i}.blocks.{j}"
            c = x.shape[1]
            y = np_conv2d(x, p[q + ".conv_dw.weight"], p[q + ".conv_dw.bias"], pad=3, groups=c)
            y = norm(y, q + ".norm").transpose(0, 2, 3, 1)
            y = np_gelu(y @ p[q + ".mlp.fc1.weight"].T + p[q + ".mlp.fc1.bias"])
            y = (y @ p[q + ".mlp.fc2.weight"].T + p[q + ".mlp.fc2.bias"]) * p[q + ".gamma"]
            x = x + y.transpose(0, 3, 1, 2)
    pooled = x.mean(axis=(2, 3))
    pooled = np_layer_norm(pooled, p["head.norm.weight"], p["head.norm.bias"], axis=1)
    return pooled @ p["head.fc.weight"].T + p["head.fc.bias"]


def random_checkpoint(cfg: Config, rng) -> dict[str, np.ndarray]:
    """Random weights under torchvision/timm names, listed here a third time, independently.
    Scales keep activations O(1) through the depth (a residual branch's last BN is damped, as
    the residual sums would otherwise grow with depth); BN statistics, layer scales and biases are
    far from their identity values so that every parameter visibly changes the output."""
    t: dict[str, np.ndarray] = {}

    def conv(name, o, i, k, bias=False):
        t[name + ".weight"] = rng.normal(0, math.sqrt(2.0 / (i * k * k)), (o, i, k, k))
        if bias:
            t[name + ".bias"] = rng.normal(0, 0.1, (o,))

    def bn(name, c, gain=1.0):
        t[name + ".weight"] = gain * rng.uniform(0.5, 1.5, (c,))
        t[name + ".bias"] = rng.normal(0, 0.2, (c,))
        t[name + ".running_mean"] = rng.normal(0, 0.3, (c,))
        t[name + ".running_var"] = rng.uniform(0.5, 2.0, (c,))
        t[name + ".num_batches_tracked"] = np.array(1234, dtype=np.int64)

    def ln(name, c):
        t[name + ".weight"] = rng.uniform(0.5, 1.5, (c,))
        t[name + ".bias"] = rng.normal(0, 0.2, (c,))

    def linear(name, i, o):
        t[name + ".weight"] = rng.normal(0, 1.0 / math.sqrt(i), (o, i))
        t[name + ".bias"] = rng.normal(0, 0.1, (o,))

    w = cfg.width
    if cfg.arch in RESNETS:
        conv("conv1", w, 3, 7 if cfg.stem == "imagenet" else 3)
        bn("bn1", w)
        bottleneck = cfg.arch == "resnet50"
        c_in = w
        for i, depth in enumerate(cfg.depths):
            planes = w * 2**i
            c_out = planes * (4 if bottleneck else 1)
            for j in range(depth):
                q = f"layer{i + 1}.{j}"
                if bottleneck:
                    conv(q + ".conv1", planes, c_in, 1), bn(q + ".bn1", planes)
                    conv(q + ".conv2", planes, planes, 3), bn(q + ".bn2", planes)
                    conv(q + ".conv3", c_out, planes, 1), bn(q + ".bn3", c_out, gain=0.3)
                else:
                    conv(q + ".conv1", planes, c_in, 3), bn(q + ".bn1", planes)
                    conv(q + ".conv2", planes, planes, 3), bn(q + ".bn2", planes, gain=0.3)
                if j == 0 and (i > 0 or c_in != c_out):
                    conv(q + ".downsample.0", c_out, c_in, 1), bn(q + ".downsample.1", c_out)
                c_in = c_out
        linear("fc", c_in, cfg.num_classes)
    else:
        dims = [w * 2**i for i in range(4)]
        conv("stem.0", dims[0], 3, 4 if cfg.stem == "imagenet" else 2, bias=True)
        ln("stem.1", dims[0])
        for i, depth in enumerate(cfg.depths):
            if i > 0:
                ln(f"stages.{i}.downsample.0", dims[i - 1])
                conv(f"stages.{i}.downsample.1", dims[i], dims[i - 1], 2, bias=True)
            for j in range(depth):
                q, c = f"stages.{i}.blocks.{j}", dims[i]
                t[q + ".conv_dw.weight"] = rng.normal(0, 1.0 / 7, (c, 1, 7, 7))
                t[q + ".conv_dw.bias"] = rng.normal(0, 0.1, (c,))
                ln(q + ".norm", c)
                linear(q + ".mlp.fc1", c, 4 * c)
                linear(q + ".mlp.fc2", 4 * c, c)
                t[q + ".gamma"] = rng.uniform(0.3, 1.0, (c,)) * rng.choice([-1.0, 1.0], (c,))
        ln("head.norm", dims[3])
        linear("head.fc", dims[3], cfg.num_classes)
    return {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in t.items()}


# f32 rounding leaves ~1e-7 here; 1e-5 keeps a wide margin for other CPUs' kernels while still
# failing plausible near-misses such as the tanh approximation of GELU (~7e-5 on these cases).
SELF_TEST_TOL = 1e-5


def self_test() -> int:
    import onnxruntime as ort

    cases = [  # (name, config, batch, size): each stem of each family at least once
        ("r18_small", {"arch": "resnet18", "num_classes": 10, "stem": "small", "base_width": 8, "depths": None}, 3, 32),
        ("r50", {"arch": "resnet50", "num_classes": 7, "stem": "imagenet", "base_width": 8, "depths": None}, 2, 64),
        ("cnxt_small", {"arch": "convnext-tiny", "num_classes": 10, "stem": "small", "base_width": 16, "depths": [1, 1, 2, 1]}, 3, 32),
        ("cnxt_imagenet", {"arch": "convnext-base", "num_classes": 5, "stem": "imagenet", "base_width": 8, "depths": [1, 1, 1, 1]}, 2, 64),
    ]
    print(f"self-test: onnx {__import__('onnx').__version__}, onnxruntime {ort.__version__}, numpy {np.__version__}")
    rng = np.random.default_rng(1234)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, raw_cfg, batch, size in cases:
            cfg = Config.from_json({**raw_cfg, "kernels": "fast"})
            path = os.path.join(tmp, name + ".safetensors")
            write_safetensors(path, random_checkpoint(cfg, rng))
            with open(path + ".json", "w") as f:
                json.dump({"config": raw_cfg}, f)
            # From here on, only what a real run sees: the files on disk.
            cfg, weights = load_checkpoint(path)
            session = make_session(build_model(cfg, weights, batch, size), threads=2)
            x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
            (got,) = session.run(["logits"], {"input": x})
            params = {k: v.astype(np.float64) for k, v in weights.items() if v.dtype.kind == "f"}
            ref = (np_resnet if cfg.arch in RESNETS else np_convnext)(cfg, params, x.astype(np.float64))
            rel = float(np.max(np.abs(got - ref))) / (1.0 + float(np.max(np.abs(ref))))
            ok = got.shape == ref.shape and rel < SELF_TEST_TOL

            # The --check path, on files in the Rust code's format: it must accept the reference
            # logits and reject them once one logit is off by 1 %.
            inp, logits = os.path.join(tmp, name + ".input.bin"), os.path.join(tmp, name + ".logits.bin")
            x.astype("<f4").tofile(inp)
            ref.astype("<f4").tofile(logits)
            accepted = check_logits(session, inp, logits, batch, size, cfg.num_classes)[0]
            bad = ref.astype(np.float32)
            bad[0, 0] += 0.01 * (1.0 + np.max(np.abs(ref)))
            bad.astype("<f4").tofile(logits)
            rejected = not check_logits(session, inp, logits, batch, size, cfg.num_classes)[0]
            ms = statistics.median(time_runs(session, x, warmup=1, runs=3))

            passed = ok and accepted and rejected
            failures += not passed
            print(f"  {'ok  ' if passed else 'FAIL'} {name:14s} {cfg.describe()}, input {batch}x3x{size}x{size}: "
                  f"max |ort - numpy| / (1 + max |logit|) = {rel:.2e}, logit std {np.std(ref):.3f}, "
                  f"--check accepts {accepted} rejects-1% {rejected}, {ms:.2f} ms/batch")
    print(f"self-test: {len(cases) - failures} passed, {failures} failed")
    return 1 if failures else 0


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="?", help="<name>.safetensors, with <name>.safetensors.json beside it")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=64, help="input height = width")
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads (inter-op is 1)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--check", nargs=2, metavar=("INPUT.bin", "LOGITS.bin"),
                    help="raw little-endian f32 (batch,3,size,size) input and (batch,num_classes) logits to compare with")
    ap.add_argument("--save-onnx", metavar="OUT.onnx", help="also write the ONNX model")
    ap.add_argument("--json", action="store_true", help="print one JSON line on stdout; human-readable lines go to stderr")
    ap.add_argument("--serve", action="store_true",
                    help="with --json: after the warm-up print {\"ready\": true}, then for each line N on stdin time N "
                         "runs and print one JSON line with their median, until stdin closes (lets a caller interleave "
                         "ORT's timings with its own)")
    ap.add_argument("--self-test", action="store_true", help="check the graph builder against a numpy forward on random checkpoints")
    args = ap.parse_args(argv)

    if args.self_test:
        return self_test()
    if not args.checkpoint:
        ap.error("a checkpoint is needed (or --self-test)")
    if args.serve and not args.json:
        ap.error("--serve needs --json")
    if min(args.batch, args.size, args.threads, args.runs) < 1 or args.warmup < 0:
        ap.error("--batch, --size, --threads and --runs must be positive, --warmup non-negative")

    try:
        return run(args)
    except (OSError, ValueError) as e:  # a wrong file or argument, not a bug: no traceback
        print(f"onnx_bench: error: {e}", file=sys.stderr)
        return 2


def run(args) -> int:
    import onnx
    import onnxruntime as ort

    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    cfg, weights = load_checkpoint(args.checkpoint)
    model = build_model(cfg, weights, args.batch, args.size)
    if args.save_onnx:
        onnx.save(model, args.save_onnx)
        log(f"wrote {args.save_onnx}")
    session = make_session(model, args.threads)
    log(f"{cfg.describe()} from {args.checkpoint}; onnxruntime {ort.__version__}, {args.threads} thread(s)")

    if args.check:
        ok, diff, tol = check_logits(session, *args.check, args.batch, args.size, cfg.num_classes)
        log(f"check: max |onnx - rust| = {diff:.3e} (tolerance {tol:.3e}): {'ok' if ok else 'MISMATCH'}")
        if not ok:
            return 1

    x = bench_input(args.batch, args.size)
    if args.serve:
        return serve(session, x, args.warmup)
    times = time_runs(session, x, args.warmup, args.runs)
    median = statistics.median(times)
    ips = args.batch / (median / 1e3)
    log(f"batch {args.batch} x 3 x {args.size} x {args.size}: median {median:.2f} ms/batch "
        f"(min {min(times):.2f}, max {max(times):.2f}, {args.runs} runs after {args.warmup} warm-up), {ips:.1f} images/s")
    if args.json:
        print(json.dumps({"arch": cfg.arch, "batch": args.batch, "size": args.size, "threads": args.threads,
                          "median_ms": round(median, 4), "images_per_s": round(ips, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
