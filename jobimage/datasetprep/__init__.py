"""datasetprep: HuggingFace datasets → Megatron-LM indexed datasets, on Kubernetes or locally."""
__version__ = "0.1.0"
