"""Layers of the user's model: taps, cuts, pooling, and every fact headkit reads from a model.

``model`` (facts: names, wrappers, prefix tokens, default layers, library), ``hooks`` (the hook
primitives taps and cuts share), ``tap`` (`LayerTap`), ``truncate`` (`truncate_at`), ``pool``,
``fx`` (torch.fx tracing), ``checkpoint`` (`load_checkpoint`). Imports only ``headkit._errors``.
"""
