"""CPU fast paths of the model layers, each tested equal to its plain reference.

- :mod:`~ctrbench.models.fast.embedding_bank`: the fused embedding table with one sparse
  gradient per step (reference: one ``nn.Embedding`` per vocabulary).
- :mod:`~ctrbench.models.fast.dice`: Dice as one autograd function with a hand-written backward
  (reference: :func:`ctrbench.models.layers.dice`, the DIN paper's formula).
- :mod:`~ctrbench.models.fast.dropout`: dropout with a native counter-based (Philox) keep mask
  regenerated in the backward, and a residual form (``native_dropout.cpp``), else masks drawn
  with ``rand`` (reference: ``nn.Dropout``).
- :mod:`~ctrbench.models.fast.cin`: xDeepFM's CIN as matmuls on the embedding columns, its
  first layer on the distinct symmetric pairs (reference: :class:`ctrbench.models.layers.CIN`),
  whose products with the filters run in oneDNN's matmul
  (:mod:`~ctrbench.models.fast.onednn_linear`; reference: ``torch.nn.functional.linear``) and
  whose later layers' outer-product backward is one native pass
  (:mod:`~ctrbench.models.fast.native_outer`, ``native_outer.cpp``; reference: the broadcast
  product's autograd).
- :mod:`~ctrbench.models.fast.row_blocks`: evaluation in blocks of rows (reference: one pass).
- :mod:`~ctrbench.models.fast.gated_scan`: DIEN's GRU and AUGRU recurrences with a hand-written
  backward (references: ``nn.GRU`` and :func:`ctrbench.models.sequence.augru_reference`, which
  ``AUGRU(fast=False)`` runs); :mod:`~ctrbench.models.fast.packed_scan`: the same over the
  valid steps only, packed by step (reference: the padded scans at the valid steps);
  :mod:`~ctrbench.models.fast.native_scan`: the packed scans as one native C++ kernel per
  direction (``native_scan.cpp``; reference: the packed torch loop), the CPU default in float32.
- :mod:`~ctrbench.models.fast.packed_attention`: MIAN's multi-head self-attention over the valid
  steps by length group, with a hand-written backward (reference:
  :meth:`ctrbench.models.sequence.MaskedSelfAttention.mix` over the padded batch);
  :mod:`~ctrbench.models.fast.fused_attention`: the same as one native C++ kernel per direction
  (``fused_attention.cpp``, built by :mod:`ctrbench.native`; the torch paths run where it is
  not built), the CPU default in float32.
- :mod:`~ctrbench.models.fast.fused_gim`: MIAN's GIM (projections, scores, softmax, weighted
  sum) as one native C++ kernel per direction (``fused_gim.cpp``; reference:
  :meth:`ctrbench.models.mian.GlobalInteraction.forward`'s torch path);
  :mod:`~ctrbench.models.fast.fused_ibim` and :mod:`~ctrbench.models.fast.fused_fields`: its
  IBIM and its IUIM / ICIM the same way (``fused_ibim.cpp``, ``fused_fields.cpp``; references:
  ``BehaviorInteraction.packed`` and ``FieldInteraction.forward``'s torch paths).
- :mod:`~ctrbench.models.fast.fused_dien`: DIEN's attention over the packed steps and its
  auxiliary loss, one native C++ kernel per direction each (``fused_dien.cpp``; reference: the
  torch code of :class:`ctrbench.models.dien.DIEN` with ``NATIVE = False``).
- :mod:`~ctrbench.models.fast.transformer_block`: MIAN's Pre-LN block over the packed steps as
  one autograd node with a hand-written backward over the native kernels (reference: the same
  :class:`ctrbench.models.sequence.TransformerBlock` through autograd);
  :mod:`~ctrbench.models.fast.native_layer_norm`: its LayerNorms (``native_layer_norm.cpp``;
  reference: ``torch.nn.functional.layer_norm``); :mod:`~ctrbench.models.fast.native_relu`: its
  FFN's ReLU backward with the bias gradient (``native_relu.cpp``; reference:
  ``threshold_backward`` and a column sum).

Nothing is imported here: ``models.layers`` imports ``dice``, ``dropout`` and ``embedding_bank``
(which import no model module but ``models.init``), ``cin`` imports ``models.layers``,
``native_outer`` and ``onednn_linear`` (torch and ``ctrbench.openmp``), and ``gated_scan`` and
``packed_attention`` import only torch (``packed_scan`` imports ``gated_scan``, the modules
with a C++ source import ``ctrbench.native``, ``transformer_block`` imports ``dropout``,
``fused_attention``, ``native_layer_norm`` and ``native_relu``; the C++ sources but
``deferred_adam.cpp`` and ``fused_ibim.cpp`` share ``native_vector.h``).
"""
