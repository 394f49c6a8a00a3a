"""CPU fast paths of the model layers, each tested equal to its plain reference.

- :mod:`~ctrbench.models.fast.embedding_bank`: the fused embedding table with one sparse
  gradient per step (reference: one ``nn.Embedding`` per vocabulary).
- :mod:`~ctrbench.models.fast.dice`: Dice as one autograd function with a hand-written backward
  (reference: :func:`ctrbench.models.layers.dice`, the DIN paper's formula).
- :mod:`~ctrbench.models.fast.dropout`: dropout masks drawn with ``rand`` (reference:
  ``nn.Dropout``).

Nothing is imported here, so that ``models.layers`` can import the leaf modules directly.
"""
