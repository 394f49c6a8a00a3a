"""CPU fast paths of the model layers, each tested equal to its plain reference.

- :mod:`~ctrbench.models.fast.embedding_bank`: the fused embedding table with one sparse
  gradient per step (reference: one ``nn.Embedding`` per vocabulary).
- :mod:`~ctrbench.models.fast.dice`: Dice as one autograd function with a hand-written backward
  (reference: :func:`ctrbench.models.layers.dice`, the DIN paper's formula).
- :mod:`~ctrbench.models.fast.dropout`: dropout masks drawn with ``rand`` (reference:
  ``nn.Dropout``).
- :mod:`~ctrbench.models.fast.cin`: xDeepFM's CIN as batched matmuls (reference:
  :class:`ctrbench.models.layers.CIN`).
- :mod:`~ctrbench.models.fast.row_blocks`: evaluation in blocks of rows (reference: one pass).
- :mod:`~ctrbench.models.fast.gated_scan`: DIEN's GRU and AUGRU recurrences with a hand-written
  backward (references: ``nn.GRU`` and :func:`ctrbench.models.sequence.augru_reference`, which
  ``AUGRU(fast=False)`` runs).

Nothing is imported here: ``models.layers`` imports ``dice``, ``dropout`` and ``embedding_bank``
(which import no model module but ``models.init``), ``cin`` imports ``models.layers``, and
``gated_scan`` imports only torch.
"""
