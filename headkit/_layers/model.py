"""Facts about a user's model, in one place.

Everything headkit needs to know about an encoder it did not build lives here: whether it is a
module at all (`check_module`), what wraps it (`unwrap`: torch.compile, DDP, DataParallel, FSDP),
its layer names (`module_names`; specs are parsed in ``specs``) and timm's index contract
(`has_index_semantics`), its prefix tokens
(`num_prefix_tokens`), its block lists (Hugging Face / open_clip), the layers a sweep uses by
default (`default_layers`) and how a checkpoint maps onto it (`load_checkpoint`).
"""

from __future__ import annotations

import re
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .._errors import HeadkitError

__all__ = [
    "WRAPPER_PREFIXES",
    "Call",
    "Hint",
    "LayerSpec",
    "TapInfo",
    "block_lists",
    "channel_hint",
    "check_module",
    "default_layers",
    "fitting_pool",
    "has_index_semantics",
    "is_compiled",
    "library",
    "num_indices",
    "num_prefix_tokens",
    "pad_token_id",
    "strip_wrapper_prefix",
    "unwrap",
    "wrappers",
]

LayerSpec = int | str
Call = int | Literal["all"] | None  # which call of a module that runs several times

# name segments that wrappers insert into module paths (FSDP1 auto-wrap, checkpoint_wrapper,
# torch.compile of a submodule): a user's name without them still resolves
_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod")


# ----------------------------------------------------------------------------- what it is


def check_module(obj: object, where: str) -> nn.Module:
    """Return ``obj`` if it is an ``nn.Module``; otherwise a `HeadkitError` that says what to pass.

    Args:
        obj: what the user passed as the model.
        where: the entry point, for the message (e.g. ``"LayerTap"``).

    Raises:
        HeadkitError: for a tuple such as open_clip's ``(model, preprocess_train,
            preprocess_val)``, a string, None, a state_dict, or anything else that is not a module.

    Example:
        >>> from torch import nn
        >>> net = nn.Linear(2, 3)
        >>> check_module(net, "LayerTap") is net
        True
        >>> check_module((net, None, None), "LayerTap")
        Traceback (most recent call last):
        ...
        headkit._errors.HeadkitError: LayerTap needs an nn.Module, got a tuple of 3 (Linear, NoneType, NoneType): pass the model, its first element (open_clip.create_model_and_transforms returns (model, preprocess_train, preprocess_val))
    """
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, (tuple, list)):
        kinds = ", ".join(type(o).__name__ for o in obj[:4]) + (", ..." if len(obj) > 4 else "")
        first = obj[0] if obj else None
        hint = (
            ": pass the model, its first element (open_clip.create_model_and_transforms returns "
            "(model, preprocess_train, preprocess_val))"
            if isinstance(first, nn.Module)
            else ": pass the model itself"
        )
        raise HeadkitError(
            f"{where} needs an nn.Module, got a {type(obj).__name__} of {len(obj)} ({kinds}){hint}"
        )
    if isinstance(obj, str):
        raise HeadkitError(
            f"{where} needs an nn.Module, got the string {obj!r}: build the model first, e.g. "
            "timm.create_model(name, pretrained=False) or transformers.AutoModel.from_config(cfg)"
        )
    if obj is None:
        raise HeadkitError(f"{where} needs an nn.Module, got None")
    if isinstance(obj, Mapping):
        raise HeadkitError(
            f"{where} needs an nn.Module, got a {type(obj).__name__} (a state_dict?): build the "
            "model, then headkit.load_checkpoint(model, state_dict)"
        )
    raise HeadkitError(
        f"{where} needs an nn.Module, got {type(obj).__module__}.{type(obj).__name__}"
    )


def _is_fsdp1(model: nn.Module) -> bool:
    return type(model).__name__ == "FullyShardedDataParallel" and hasattr(
        model, "_fsdp_wrapped_module"
    )


def wrappers(model: nn.Module) -> list[nn.Module]:
    """The wrappers around the user's module, outermost first (compile, DDP, DataParallel, FSDP)."""
    out: list[nn.Module] = []
    for _ in range(8):
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            out.append(model)
            model = inner
            continue
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            out.append(model)
            model = model.module
            continue
        if _is_fsdp1(model):
            out.append(model)
            model = model.module  # type: ignore[assignment]
            continue
        break
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside ``torch.compile``, DDP, DataParallel and FSDP wrappers.

    FSDP2 (``fully_shard``) and plain modules are returned as they are.

    Example:
        >>> from torch import nn
        >>> net = nn.Linear(2, 3)
        >>> unwrap(nn.DataParallel(net)) is net
        True
    """
    ws = wrappers(model)
    if not ws:
        return model
    last = ws[-1]
    inner = getattr(last, "_orig_mod", None)
    if isinstance(inner, nn.Module):
        return inner
    out: nn.Module = last.module  # type: ignore[assignment]
    return out


def is_compiled(model: nn.Module) -> bool:
    """True for ``torch.compile(model)`` wrappers and modules compiled in place."""
    if any(isinstance(getattr(w, "_orig_mod", None), nn.Module) for w in [model, *wrappers(model)]):
        return True
    return getattr(model, "_compiled_call_impl", None) is not None


# ----------------------------------------------------------------------------- timm indices


def has_index_semantics(model: nn.Module) -> bool:
    """Whether int layer specs mean something: timm's ``forward_intermediates`` contract."""
    return callable(getattr(model, "forward_intermediates", None)) and _feature_info_len(model) > 0


def _feature_info_len(model: nn.Module) -> int:
    fi: Any = getattr(model, "feature_info", None)
    try:
        return len(fi) if fi is not None else 0
    except TypeError:
        return 0


def num_indices(model: nn.Module) -> int:
    """Number of valid int indices (``len(model.feature_info)``)."""
    return _feature_info_len(model)


# ----------------------------------------------------------------------------- names


def canonical_name(name: str) -> str:
    """A module path without the segments that wrappers insert (FSDP, checkpoint_wrapper)."""
    if not any(s in name for s in _WRAPPER_SEGMENTS):
        return name
    return ".".join(p for p in name.split(".") if p not in _WRAPPER_SEGMENTS)


WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel, torch.compile


def strip_wrapper_prefix(name: str, known: Container[str]) -> str:
    """``name`` without the leading prefixes that wrappers add to names and state-dict keys
    (``module.``, ``_orig_mod.``), where ``name`` itself is not in ``known`` and the rest is."""
    while name not in known:
        wrap = next((w for w in WRAPPER_PREFIXES if name.startswith(w)), None)
        if wrap is None or name[len(wrap) :] not in known:
            return name
        name = name[len(wrap) :]
    return name


def module_names(model: nn.Module) -> dict[str, str]:
    """``{name as a user writes it: real name}`` for every named submodule."""
    out: dict[str, str] = {}
    for n, _ in model.named_modules():
        if n:
            out.setdefault(n, n)
            out.setdefault(canonical_name(n), n)
    return out


# ----------------------------------------------------------------------------- prefix tokens

# parameter / buffer names (last segment) that hold prefix tokens, and how many each holds
_CLS_NAMES = ("cls_token", "class_token", "class_embedding")
_DIST_NAMES = ("dist_token", "distillation_token")
_REG_NAMES = ("reg_token", "register_tokens", "registers", "reg_tokens")
# names that look like prefix tokens headkit cannot interpret: refuse to guess
_SUSPECT = re.compile(r"(cls|class_emb|token|register|prefix|distill)", re.IGNORECASE)
_NOT_PREFIX = re.compile(
    r"(mask_token|token_embed|token_type|word_emb|tokenizer|position|pos_emb|tokens_per|"
    r"token_mixer|token_mixing|tokens_mlp|token_mlp|cls_head|class_head|classifier|num_tokens|"
    r"probe|query|queries|latent|relative|rel_pos|bias_table|gamma|scale|norm)",
    re.IGNORECASE,
)


def _own_tensors(
    module: nn.Module, skip: frozenset[str] = frozenset()
) -> Iterator[tuple[str, Any]]:
    for full, t in [*module.named_parameters(), *module.named_buffers()]:
        if full.split(".", 1)[0] not in skip:
            yield full, t


def _token_kind(full: str, t: Any = None) -> str | None:
    """ "cls" / "dist" / "reg" for a known prefix-token tensor name, "?" for one that only looks
    like one (by name, or a ``(1, k, D)`` parameter with a few rows that is not a known kind),
    None otherwise."""
    last = full.rsplit(".", 1)[-1]
    if last in _CLS_NAMES:
        return "cls"
    if last in _DIST_NAMES:
        return "dist"
    if last in _REG_NAMES:
        return "reg"
    if _NOT_PREFIX.search(full):
        return None
    if _SUSPECT.search(last):
        return "?"
    if (
        isinstance(t, nn.Parameter)
        and t.dim() == 3
        and t.shape[0] == 1
        and 1 <= t.shape[1] <= 16
        and t.shape[2] > 1
    ):
        return "?"  # looks like learned tokens prepended to the sequence
    return None


def _count_in(module: nn.Module, skip: frozenset[str] = frozenset()) -> int | None:
    """Prefix tokens found in ``module``'s tree (children in ``skip`` left out); None if some
    token-like tensor is not understood."""
    n = getattr(module, "num_prefix_tokens", None)
    if isinstance(n, int) and not isinstance(n, bool):
        return n
    count = 0
    for full, t in _own_tensors(module, skip):
        kind = _token_kind(full, t)
        if kind is None or not isinstance(t, Tensor):
            continue
        if kind == "?":
            return None
        if kind == "reg":
            count += int(t.shape[-2]) if t.dim() >= 2 else 1
        else:
            count += int(t.shape[-2]) if t.dim() >= 3 else 1
    return count


def _has_tokens(module: nn.Module, skip: frozenset[str]) -> bool:
    n = getattr(module, "num_prefix_tokens", None)
    if isinstance(n, int) and not isinstance(n, bool):
        return True
    return any(_token_kind(full, t) is not None for full, t in _own_tensors(module, skip))


def num_prefix_tokens(model: nn.Module, layer: str | None = None) -> int | None:
    """Number of prefix tokens (class, distillation, register) in the token outputs of ``model``.

    Read from the model itself: timm's ``num_prefix_tokens``; Hugging Face ``cls_token`` /
    ``class_embedding`` (ViT, DeiT, DINOv2, CLIP), ``distillation_token`` (DeiT),
    ``register_tokens`` (DINOv2 with registers, ``config.num_register_tokens``); open_clip's
    ``class_embedding``. With ``layer`` (a module name), only the tower that holds the layer is
    read (the vision tower of a CLIP model has a class token, its text tower has none).

    Returns 0 when the model holds no tensor that looks like a prefix token, and None when it
    holds one headkit cannot interpret (then pass ``num_prefix_tokens=`` to `LayerTap`).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class TinyViT(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        ...         self.reg_token = nn.Parameter(torch.zeros(1, 4, 8))
        ...         self.blocks = nn.Sequential(nn.Linear(8, 8))
        >>> num_prefix_tokens(TinyViT())
        5
        >>> num_prefix_tokens(nn.Sequential(nn.Linear(8, 8)))
        0
    """
    model = unwrap(model)
    if not layer:
        return _count_in(model)
    modules = dict(model.named_modules())
    parts = module_names(model).get(layer, layer).split(".")
    # walk up from the layer; at each ancestor, leave out sibling subtrees that are towers of
    # their own (they hold a block list: CLIP's other tower), and stop at the first ancestor
    # whose remaining tree holds prefix tokens
    for depth in range(len(parts) - 1, -1, -1):
        anc = ".".join(parts[:depth])
        sub = modules.get(anc)
        if sub is None:
            continue
        on_path = parts[depth] if depth < len(parts) else None
        skip = frozenset(n for n, c in sub.named_children() if n != on_path and block_lists(c))
        if _has_tokens(sub, skip):
            return _count_in(sub, skip)
    return 0


# ----------------------------------------------------------------------------- layouts

Hint = tuple[frozenset[int], frozenset[int]]


def channel_hint(module: nn.Module, *, pre: bool = False) -> Hint:
    """Channel sizes of the weight layers in ``module``: ``(first, last)``, the sizes layers
    with channels first produce (conv, batch norm: ``(B, C, L)``, ``(B, C, H, W)``) and those
    with channels last produce (linear, layer norm: ``(B, T, C)`` tokens, ``(B, H, W, C)`` maps
    as in Swin). With ``pre=True``, the sizes they take (for the module's input). A hint only:
    the pooling checks it against the output's shape."""
    first: set[int] = set()
    last: set[int] = set()
    for m in module.modules():
        if not any(True for _ in m.parameters(recurse=False)):
            continue
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d)):
            first.add(int(m.in_channels if pre else m.out_channels))
        elif isinstance(
            m,
            (
                nn.BatchNorm1d,
                nn.BatchNorm2d,
                nn.BatchNorm3d,
                nn.InstanceNorm1d,
                nn.InstanceNorm2d,
            ),
        ):
            first.add(int(m.num_features))
        elif isinstance(m, nn.GroupNorm):
            first.add(int(m.num_channels))
        elif isinstance(m, nn.Linear):
            last.add(int(m.in_features if pre else m.out_features))
        elif isinstance(m, nn.LayerNorm):
            last.add(int(m.normalized_shape[-1]))
        elif isinstance(m, nn.MultiheadAttention):
            last.add(int(m.embed_dim))
        elif isinstance(m, nn.Embedding) and not pre:
            last.add(int(m.embedding_dim))
    return frozenset(first), frozenset(last)


#: Libraries whose modules all give batch-first outputs.
BATCH_FIRST_LIBRARIES = ("timm", "transformers")


def declared_layout(model: nn.Module, name: str | None) -> bool | None:
    """Whether the outputs (and inputs) of module ``name`` are batch-first, as the model says.

    Never guessed from sizes: ``True`` for timm and Hugging Face models (batch-first by
    design), and for a model in which no module has ``batch_first=False`` (every PyTorch layer
    without the attribute is batch-first); otherwise the ``batch_first`` of the modules inside
    ``name`` (``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``'s ``self_attn``, RNNs,
    open_clip's ``Transformer``), when they agree. None when they disagree, or when only
    modules outside ``name`` declare one (in an older open_clip model the MLP of a block
    receives tokens first, ``ln_pre`` batch first): the caller must say.
    """
    if library(model) in BATCH_FIRST_LIBRARIES:
        return True
    flags = {
        m.batch_first for m in model.modules() if isinstance(getattr(m, "batch_first", None), bool)
    }
    if False not in flags:
        return True
    if name is None:
        return None
    sub = dict(model.named_modules()).get(name)
    if sub is None:
        return None
    own = {
        m.batch_first for m in sub.modules() if isinstance(getattr(m, "batch_first", None), bool)
    }
    return own.pop() if len(own) == 1 else None


# ----------------------------------------------------------------------------- block lists

_BLOCK_LIST_NAMES = frozenset(
    {"layer", "layers", "blocks", "block", "resblocks", "stages", "h", "encoder_layers"}
)
_VISION_TOWERS = ("visual", "vision_model", "vision_tower", "image_encoder", "vision_encoder")


def pad_token_id(model: nn.Module) -> int | None:
    """The padding id of a Hugging Face text model (``config.pad_token_id``), or None."""
    pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    return pad if isinstance(pad, int) else None


def library(model: nn.Module) -> str:
    """The top-level package of the model's class: ``"timm"``, ``"transformers"``,
    ``"open_clip"``, ``"torchvision"``, ... (``"__main__"`` for a script's own class)."""
    mod = type(model).__module__.split(".", 1)[0]
    return mod


def _holds_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def block_lists(model: nn.Module) -> list[str]:
    """Names of the block lists of a Hugging Face / open_clip encoder, outermost only.

    A block list is an ``nn.ModuleList`` (or ``nn.Sequential``) named ``layer``, ``layers``,
    ``blocks``, ``resblocks``, ``stages``, ... holding at least one parameter-holding block,
    every block of one class: ``encoder.layer`` (BERT, DINOv2), ``encoder.layers`` (CLIP, Swin),
    ``layers`` (ViT), ``encoder.stages`` (ConvNeXt), ``transformer.resblocks`` (open_clip).
    Lists inside another list's blocks (Swin's per-stage ``blocks``) are left out.

    Example:
        >>> from torch import nn
        >>> class Enc(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        >>> block_lists(Enc())
        ['layers']
    """
    found: list[str] = []
    for name, m in model.named_modules():
        if not name or not isinstance(m, (nn.ModuleList, nn.Sequential)):
            continue
        if name.rsplit(".", 1)[-1] not in _BLOCK_LIST_NAMES:
            continue
        children = list(m.children())
        if not children or len({type(c) for c in children}) != 1:
            continue
        if not all(_holds_params(c) for c in children):
            continue
        if any(name.startswith(f + ".") for f in found):
            continue
        found.append(name)
    return found


# ----------------------------------------------------------------------------- default layers


def _inplace(m: nn.Module) -> bool:
    return bool(getattr(m, "inplace", False))


def _is_param_free_leaf(m: nn.Module) -> bool:
    return not any(True for _ in m.children()) and not _holds_params(m)


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _children_candidates(parent: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    """A module's children that can be default layers, in registration order: no parameter-free
    leaves (ReLU, Identity, Dropout, Flatten, pooling), no module whose output the next sibling
    changes in place (``bn1`` before ``ReLU(inplace=True)``); ModuleLists are expanded."""
    kids = list(parent.named_children())
    out: list[tuple[str, nn.Module]] = []
    for i, (name, m) in enumerate(kids):
        full = f"{prefix}{name}"
        if isinstance(m, (nn.ModuleList, nn.ModuleDict)):
            out.extend(_children_candidates(m, full + "."))
            continue
        if _is_param_free_leaf(m):
            continue
        nxt = kids[i + 1][1] if i + 1 < len(kids) else None
        if nxt is not None and _inplace(nxt):
            continue
        out.append((full, m))
    return out


def _albert_layers(model: nn.Module) -> list[LayerSpec] | None:
    cfg: Any = getattr(model, "config", None)
    groups = [n for n, _ in model.named_modules() if n.endswith("albert_layer_groups")]
    if cfg is None or len(groups) != 1:
        return None
    n = int(getattr(cfg, "num_hidden_layers", 0))
    g = int(getattr(cfg, "num_hidden_groups", 1) or 1)
    if n <= 0:
        return None
    out: list[LayerSpec] = []
    seen: dict[int, int] = {}
    for i in range(n):
        gi = int(i / (n / g))
        out.append(f"{groups[0]}.{gi}@{seen.get(gi, 0)}")
        seen[gi] = seen.get(gi, 0) + 1
    return out


def default_layers(model: nn.Module) -> list[LayerSpec]:
    """The layers a sweep reads when none are given.

    - timm models: every index of the ``forward_intermediates`` contract;
    - Hugging Face and open_clip encoders: every block of the encoder's block list
      (`block_lists`; with both a text and an image tower, the image tower's; ALBERT's shared
      layer group once per call, as ``"name@call"``);
    - anything else: the top-level children, a container holding most of the parameters
      (``encoder``, ``features``) replaced by its children, leaving out parameter-free leaves
      (ReLU, Identity, Dropout, Flatten, pooling) and any module whose output the next module
      changes in place (torchvision ResNet's ``bn1``, followed by ``ReLU(inplace=True)``).

    Raises:
        HeadkitError: a non-module, or a model without a layer to read.

    Args:
        model: the encoder (wrappers such as DDP and ``torch.compile`` are looked through).

    Returns:
        Layer specs (module names, or timm indices), shallowest first.

    Example:
        >>> from torch import nn
        >>> from headkit import default_layers
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(inplace=True), nn.Linear(8, 2))
        >>> default_layers(net)
        ['0', '3']
    """
    inner = unwrap(check_module(model, "default_layers"))
    if has_index_semantics(inner):
        return list(range(num_indices(inner)))
    lib = library(inner)
    if lib in ("transformers", "open_clip"):
        albert = _albert_layers(inner) if lib == "transformers" else None
        if albert:
            return albert
        towers = [(n, c) for n, c in inner.named_children() if n in _VISION_TOWERS]
        if len(towers) == 1:  # a model with an image and a text tower (CLIP): the image tower
            name, tower = towers[0]
            return [f"{name}.{spec}" for spec in default_layers(tower)]
        lists = block_lists(inner)
        if len(lists) > 1:
            vision = [n for n in lists if any(t in n.split(".") for t in _VISION_TOWERS)]
            if len(vision) == 1:
                lists = vision
            else:
                raise HeadkitError(
                    f"{type(inner).__name__} has {len(lists)} block lists {lists}; pass layers=, "
                    f"e.g. ['{lists[0]}.*'], or the tower you want"
                )
        if lists:
            lst = inner.get_submodule(lists[0])
            return [f"{lists[0]}.{n}" for n, _ in lst.named_children()]
    cands = _children_candidates(inner, "")
    for _ in range(8):
        containers = [(n, m) for n, m in cands if any(True for _ in m.children())]
        if not containers:
            break
        total = sum(_n_params(m) for _, m in cands) or 1
        containers.sort(key=lambda nm: -_n_params(nm[1]))
        few = len(cands) < 4
        expanded = False
        for big_name, big in containers:
            if not (few or _n_params(big) >= 0.8 * total):
                break
            kids = _children_candidates(big, big_name + ".")
            if len(kids) < 2:
                continue
            i = next(i for i, (n, _) in enumerate(cands) if n == big_name)
            cands = cands[:i] + kids + cands[i + 1 :]
            expanded = True
            break
        if not expanded:
            break
    if not cands:
        raise HeadkitError(
            f"{type(inner).__name__} has no child module with parameters to read; pass layers=[...]"
        )
    return [n for n, _ in cands]


# ----------------------------------------------------------------------------- a layer's output


@dataclass(frozen=True)
class TapInfo:
    """Shape and dtype of one tap, from a dry run on the meta device.

    Attributes:
        shape: output shape, batch dimension included (of the pooled output when pooled).
        dtype: output dtype.
        layer: the module name or timm index the tap reads.
        element: which part of a module output that is not a tensor was read, e.g.
            ``"element 0 of a tuple of 2"`` (Hugging Face blocks), or None.
        num_prefix_tokens: the prefix tokens a token pool skips at this layer (None: unknown).
        pre: the tap reads the module's input (a ``"name:in"`` spec).

    Example:
        >>> from torch import nn
        >>> from headkit import feature_info
        >>> info = feature_info(nn.Sequential(nn.Linear(3, 5)), ["0"], (2, 3))["0"]
        >>> info.shape, info.dtype
        ((2, 5), torch.float32)
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    layer: int | str
    element: str | None = None
    num_prefix_tokens: int | None = None
    pre: bool = False


def fitting_pool(model: nn.Module) -> tuple[Literal["mean", "avg"], str]:
    """The pool that fits ``model`` (what ``pool="auto"`` means) and why, in words.

    ``"mean"`` (over the patch tokens, prefix tokens skipped) for a model with class, register
    or distillation tokens (`num_prefix_tokens` > 0); ``"avg"`` (over every position: the
    spatial mean of a feature map, the mean of a token sequence) otherwise.

    Example:
        >>> from torch import nn
        >>> fitting_pool(nn.Sequential(nn.Conv2d(3, 8, 3)))
        ('avg', 'average over positions')
    """
    npt = num_prefix_tokens(unwrap(model))
    if npt:
        return "mean", f"mean over the patch tokens: the model has {npt} class/register token(s)"
    return "avg", "average over positions"
