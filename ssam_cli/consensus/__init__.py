"""SSAM's consensus subspaces: exact (dense), factored (LoRA), randomized (large dense); bases.py picks the route."""
