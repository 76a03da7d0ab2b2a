"""Signal ops: HannWindow, HammingWindow, BlackmanWindow, DFT, STFT, MelWeightMatrix."""

from __future__ import annotations

import numpy as np

from farm.compiler.ir.graph import Node
from farm.compiler.reference.elementwise import target_dtype
from farm.compiler.reference.registry import Context, Inputs, op


def _window(node: Node, inputs: Inputs, fn) -> np.ndarray:
    size = int(np.asarray(inputs[0]).reshape(-1)[0])
    periodic = bool(node.attr("periodic", 1))
    denominator = size if periodic else size - 1
    n = np.arange(size, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = fn(2 * np.pi * n / denominator) if denominator > 0 else np.ones(size)
    return values.astype(target_dtype(node.attr("output_datatype", 1)))


@op("HannWindow")
def hann_window(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    return _window(node, inputs, lambda t: 0.5 - 0.5 * np.cos(t))


@op("HammingWindow")
def hamming_window(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    alpha = 25.0 / 46.0
    return _window(node, inputs, lambda t: alpha - (1 - alpha) * np.cos(t))


@op("BlackmanWindow")
def blackman_window(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    return _window(node, inputs, lambda t: 0.42 - 0.5 * np.cos(t) + 0.08 * np.cos(2 * t))


def _as_complex(x: np.ndarray) -> np.ndarray:
    """[..., 1] real or [..., 2] (real, imaginary) -> complex [...], in the input's precision
    (numpy's FFT computes complex64 in single precision, as ONNX's reference does)."""
    kind = np.complex64 if x.dtype == np.float32 else np.complex128
    if x.shape[-1] == 2:
        return (x[..., 0] + 1j * x[..., 1]).astype(kind)
    return x[..., 0].astype(kind)


@op("DFT")
def dft(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    """DFT in canonical form: inputs (signal, dft_length?, axis?) with the opset-20 axis meaning."""
    x = inputs[0]
    length = inputs[1] if len(inputs) > 1 else None
    axis_input = inputs[2] if len(inputs) > 2 else None
    axis = int(np.asarray(axis_input).reshape(-1)[0]) if axis_input is not None else int(node.attr("axis", -2))
    if axis < 0:
        axis += x.ndim
    signal = _as_complex(x if x.dtype in (np.float32, np.float64) else x.astype(np.float64))
    inverse = bool(node.attr("inverse", 0))
    onesided = bool(node.attr("onesided", 0))
    if length is not None:
        n = int(np.asarray(length).reshape(-1)[0])
    else:
        n = 2 * (signal.shape[axis] - 1) if inverse and onesided else signal.shape[axis]
    if inverse and onesided:  # half spectrum in, real signal out
        return np.fft.irfft(signal, n=n, axis=axis)[..., np.newaxis].astype(x.dtype)
    spectrum = np.fft.ifft(signal, n=n, axis=axis) if inverse else np.fft.fft(signal, n=n, axis=axis)
    if onesided:
        spectrum = np.take(spectrum, np.arange(n // 2 + 1), axis=axis)
    return np.stack([spectrum.real, spectrum.imag], axis=-1).astype(x.dtype)


@op("STFT")
def stft(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    signal, step_in = inputs[0], inputs[1]
    window = inputs[2] if len(inputs) > 2 else None
    frame_length_in = inputs[3] if len(inputs) > 3 else None
    step = int(np.asarray(step_in).reshape(-1)[0])
    if frame_length_in is not None:
        frame_length = int(np.asarray(frame_length_in).reshape(-1)[0])
    else:
        frame_length = window.shape[0] if window is not None else signal.shape[1]
    complex_signal = _as_complex(signal)  # batch, length
    frames = 1 + (complex_signal.shape[1] - frame_length) // step
    starts = np.arange(frames) * step
    framed = np.stack([complex_signal[:, s : s + frame_length] for s in starts], axis=1)
    if window is not None:
        framed = framed * window.astype(np.float64)
    spectrum = np.fft.fft(framed, axis=-1)
    if node.attr("onesided", 1):
        spectrum = spectrum[..., : frame_length // 2 + 1]
    return np.stack([spectrum.real, spectrum.imag], axis=-1).astype(signal.dtype)


@op("MelWeightMatrix")
def mel_weight_matrix(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    """Triangular mel filters, [dft_length // 2 + 1, num_mel_bins], as ONNX's reference builds them."""
    num_mel_bins, dft_length, sample_rate = (int(np.asarray(v).reshape(-1)[0]) for v in inputs[:3])
    lower, upper = (float(np.asarray(v).reshape(-1)[0]) for v in inputs[3:5])
    bins = np.arange(num_mel_bins + 2)
    low_mel = 2595 * np.log1p(lower / 700) / np.log(10)
    high_mel = 2595 * np.log1p(upper / 700) / np.log(10)
    step = (high_mel - low_mel) / bins.shape[0]
    hertz = 700 * np.expm1((bins * step + low_mel) / 2595 * np.log(10))
    points = (((dft_length + 1) * hertz) // sample_rate).astype(int)
    out = np.zeros((dft_length // 2 + 1, num_mel_bins))
    for i in range(num_mel_bins):
        left, center, right = points[i], points[i + 1], points[i + 2]
        if center == left:
            out[center, i] = 1
        else:
            for j in range(left, center + 1):
                out[j, i] = (j - left) / (center - left)
        if right > center:
            for j in range(center, right):
                out[j, i] = (right - j) / (right - center)
    return out.astype(target_dtype(node.attr("output_datatype", 1)))
