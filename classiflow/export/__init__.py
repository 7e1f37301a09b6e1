"""Deployable exports of a trained model: TorchScript, ONNX and int8 ONNX, each verified and timed.

Import the submodules (``params``, ``convert``, ``quantize``, ``runtime``, ``verify``, ``pipeline``,
``report``) directly: this package imports nothing itself, so validating ``params.yaml`` never loads
PyTorch or ONNX Runtime.
"""
