"""The model card (README.md) of an export folder: what the backbone is, what it was trained on, how
well it did, and how to load it in the format at hand."""

from __future__ import annotations

import json
from typing import Any

_LOAD = {
    "timm": 'import timm\nnet = timm.create_model("local-dir:{out}", pretrained=True)  # expects normalised input',
    "torchscript": 'import torch\nnet = torch.jit.load("{out}/backbone.pt")  # float images in [0, 1]',
    "onnx": 'import onnxruntime\nsess = onnxruntime.InferenceSession("{out}/backbone.onnx")  # input "images", [0, 1]',
    "safetensors": "# the plain state dict + spec.json; rebuilt with the installed backbone plugin",
}


def model_card(marker: dict[str, Any], manifest: dict[str, Any]) -> str:
    info, fmt = marker["info"], marker["format"]
    c, h, w = info["image_shape"]
    metrics = info.get("metrics", {})
    lines = [
        f"# {info['backbone']['name']} pretrained by {info.get('pretext')} (pretextflow)",
        "",
        f"A frozen self-supervised backbone exported as **{fmt}** from run `{info.get('run_id')}`.",
        "",
        "| | |",
        "|---|---|",
        f"| method (pretext task) | {info.get('pretext')} |",
        f"| backbone | `{info['backbone']['name']}` ({info.get('num_parameters')} parameters, "
        f"{info['num_features']} features) |",
        f"| data | {info.get('dataset')} @ `{info.get('data_version')}` |",
        f"| input | {c}x{h}x{w}, float in [0, 1] (uint8 0-255 through `load_backbone`) |",
        f"| normalisation | mean {info['mean']}, std {info['std']} "
        f"({'applied by you: timm expects normalised input' if fmt == 'timm' else 'inside the model'}) |",
        *[f"| {name} (test split) | {value:.4f} |" for name, value in metrics.items()],
        f"| checked against PyTorch | max abs difference {marker.get('max_abs_error', 0.0):.1e} on one batch |",
        f"| pretextflow | {info.get('pretextflow')} |",
        "",
        "## Load it",
        "",
        "```python",
        "import pretextflow",
        'backbone = pretextflow.load_backbone("THIS_FOLDER")  # nn.Module: (N, C, H, W) images -> (N, D)',
        "```",
        "",
        "or without pretextflow:",
        "",
        "```python",
        _LOAD[fmt].format(out="THIS_FOLDER"),
        "```",
        "",
        "## Configuration of the run",
        "",
        "```json",
        json.dumps(manifest.get("config", {}), indent=2, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(lines)
