"""Publishing a merge on the Hugging Face Hub: its model card and `ssam push`."""
