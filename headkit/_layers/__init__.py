"""Layers of the user's model: taps, cuts, pooling, and every fact headkit reads from a model.

``model`` (facts: what wraps it, its names, prefix tokens, token layout, block lists, default
layers, the pool that fits it), ``specs`` (layer specs resolved against the model), ``hooks``
(the hook primitives taps and cuts share), ``run`` (running a model: its forward signature,
DDP/FSDP, timm's index route), ``tap`` (`LayerTap`), ``info`` (`feature_info`), ``truncate``
(`truncate_at`), ``pool``, ``fx`` (torch.fx tracing), ``checkpoint`` (`load_checkpoint`).
Imports only ``headkit._errors``.
"""
