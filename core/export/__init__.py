"""The backbone out of the pipeline: load it (from a run, a manifest or an export folder), export
it (timm, TorchScript, ONNX, safetensors, each with a model card) and embed image collections."""
