"""Sharing on the Hugging Face Hub: push, pull, and the model card."""
