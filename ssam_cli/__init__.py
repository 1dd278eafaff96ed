"""ssam: merge fine-tuned specialists of one base model with Singular Subspace Alignment and Merging."""

__version__ = "0.1.0"
