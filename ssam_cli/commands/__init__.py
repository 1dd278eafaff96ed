"""One module per CLI command; each imports torch and the pipeline inside the function, so `--help` stays fast."""
