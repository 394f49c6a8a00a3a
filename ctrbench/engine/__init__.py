"""The one training loop and its optimisers."""
