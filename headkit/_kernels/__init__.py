"""Kernels: the backend policy (Triton or tiled PyTorch), the Triton kernels, and the op
definitions (``op``) from which each op's eager autograd function, custom op, fake and autograd
registration are made. Imports only ``headkit._errors``; the losses and heads sit on top.
"""
