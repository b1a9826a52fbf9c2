"""An ONNX export run by onnxruntime behind the ``nn.Module`` interface ``load_backbone`` returns."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pretextflow.core.errors import StageInputError


def inference_session(model: bytes):
    try:
        import onnxruntime as ort
    except ImportError:
        raise StageInputError("reading an ONNX export needs onnxruntime: pip install 'pretextflow[onnx]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


class OnnxModule(nn.Module):
    """Float images in [0, 1] → features, computed by onnxruntime on the CPU (no autograd)."""

    def __init__(self, model: bytes):
        super().__init__()
        self.session = inference_session(model)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = self.session.run(None, {self.input_name: x})
        return torch.from_numpy(np.ascontiguousarray(out)).to(images.device)
