"""jst-pipeline: joint search-and-training pruning of CNNs.

The library needs torch alone to build models, search and train; ONNX export and
evaluation need onnx/onnxruntime, and only ``pipeline.tracking`` imports MLflow.
"""

__version__ = "0.1.0"
