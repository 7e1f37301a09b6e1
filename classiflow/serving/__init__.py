"""Online serving: decode uploaded images exactly as training did, batch concurrent requests, answer over HTTP.

Import the submodules (``images``, ``model``, ``batcher``, ``app``, ...) directly: this package imports
nothing itself, and none of them imports PyTorch, MLflow or Prefect at module level, so the slim serving image
needs only NumPy, Pillow, ONNX Runtime and FastAPI.
"""
