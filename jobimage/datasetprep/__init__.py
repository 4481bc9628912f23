"""datasetprep: HuggingFace datasets → Megatron-LM indexed datasets, on Kubernetes or locally.

The light core both programs import -- ``spec`` (the DatasetPrep model), ``contract`` (what the
operator and the job hand each other), ``hashes``, ``naming`` -- needs pydantic only; everything else
in this package is the data plane (see docs/architecture.md).
"""
__version__ = "0.1.0"
