"""Feature extraction: one pass of a model over a loader, every tapped layer at once."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from .._dist import Dist, dist_state, scatter_positions
from .._errors import HeadkitError, fmt_shape
from .._layers.model import LayerSpec, check_module, default_layers, unwrap
from .._layers.pool import Pool
from .._layers.tap import LayerTap
from ._rows import FileWriter, Rows, open_stored

__all__ = [
    "Extracted",
    "Features",
    "extract",
    "extract_features",
    "placed",
    "split_batch",
]

LABEL_KEYS = ("labels", "label", "y")
POSITIONAL_KEYS = ("image", "img", "input", "inputs", "x")


class Features(NamedTuple):
    """Per-layer features and labels from `extract_features`.

    A named tuple: ``feats, labels = extract_features(...)`` unpacks it.

    Attributes:
        feats: ``{layer: (N, D) float32 tensor}`` on the CPU (or the ``out_device`` asked for),
            memory-mapped read-only when a ``store`` folder was given.
        labels: ``(N,)`` int64 labels, or None when the loader yields inputs only.

    Example:
        >>> import torch
        >>> from headkit.probe import Features
        >>> feats, labels = Features({"layer3": torch.zeros(4, 8)}, torch.arange(4))
        >>> feats["layer3"].shape
        torch.Size([4, 8])
    """

    feats: dict[LayerSpec, Tensor]
    labels: Tensor | None


# ----------------------------------------------------------------------------- batches


@dataclass
class Batch:
    """One loader batch, taken apart: what the model gets, and the labels."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    labels: Tensor | None


def _labels(y: Any) -> Tensor | None:
    if y is None:
        return None
    t = y if isinstance(y, Tensor) else torch.as_tensor(y)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise HeadkitError(
            f"labels must be integer class indices, got dtype {t.dtype} (shape {fmt_shape(t.shape)})"
        )
    return t.reshape(-1).long()


def _split_mapping(batch: Mapping[str, Any]) -> Batch:
    found = [k for k in LABEL_KEYS if k in batch]
    if len(found) > 1:
        raise HeadkitError(f"a dict batch has several label keys {found}; keep one of them")
    y = batch[found[0]] if found else None
    rest = {k: v for k, v in batch.items() if k not in LABEL_KEYS}
    if not rest:
        raise HeadkitError(f"a dict batch has no inputs besides its labels (keys {list(batch)})")
    pos = [k for k in POSITIONAL_KEYS if k in rest]
    if len(pos) == 1:
        # {"image": x, "label": y}: x is the positional input; other tensors go as keywords and
        # non-tensor metadata (file names, ids) stays out of the call
        x = rest.pop(pos[0])
        kwargs = {k: v for k, v in rest.items() if isinstance(v, Tensor)}
        return Batch((x,), kwargs, _labels(y))
    return Batch((), rest, _labels(y))


def split_batch(batch: Any) -> Batch:
    """Take a loader batch apart into model arguments and labels.

    A batch is an inputs tensor; a tuple/list ``(inputs, labels, *extra)`` (extra items such as
    file names are ignored); or a dict (Hugging Face style): the label key (``labels``,
    ``label`` or ``y``) is taken out and the rest is passed to the model as keywords, except a
    single ``image``/``img``/``input``/``inputs``/``x`` entry, which is passed positionally.
    """
    if isinstance(batch, Tensor):
        return Batch((batch,), {}, None)
    if isinstance(batch, Mapping):
        return _split_mapping(batch)
    if isinstance(batch, (tuple, list)) and batch:
        x = batch[0]
        y = batch[1] if len(batch) > 1 else None
        if isinstance(x, Mapping):
            inner = _split_mapping(x)
            if inner.labels is not None and y is not None:
                raise HeadkitError("labels given twice: inside the inputs dict and beside it")
            return Batch(inner.args, inner.kwargs, inner.labels if y is None else _labels(y))
        if not isinstance(x, Tensor):
            raise HeadkitError(
                f"the first item of a batch must be the inputs (a tensor or a dict of tensors), "
                f"got {type(x).__name__}"
            )
        return Batch((x,), {}, _labels(y))
    raise HeadkitError(
        "a loader batch must be an inputs tensor, an (inputs, labels) pair or a dict of "
        f"tensors, got {type(batch).__name__}"
    )


def move(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor (in tuples, lists and dicts too) moved to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: move(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(move(v, device) for v in obj)
    if isinstance(obj, list):
        return [move(v, device) for v in obj]
    return obj


# ----------------------------------------------------------------------------- models


def _norm_device(device: torch.device | str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for a stateless model."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@contextlib.contextmanager
def placed(model: nn.Module, device: torch.device | str | None) -> Iterator[torch.device]:
    """Run ``model`` on ``device``: moved there for the block and moved back afterwards.

    ``device=None`` keeps the model where it is and yields its device.
    """
    inner = unwrap(model)
    devices = {t.device for t in (*inner.parameters(), *inner.buffers())}
    if device is None:
        yield model_device(inner)
        return
    dev = _norm_device(device)
    if devices <= {dev}:
        yield dev
        return
    if len(devices) > 1:
        raise HeadkitError(
            f"the model's weights live on several devices {sorted(str(d) for d in devices)}; "
            "leave device=None to run it where it is"
        )
    if inner is not model:
        raise HeadkitError(
            f"the model is wrapped ({type(model).__name__}) on {next(iter(devices))}; move it to "
            f"{dev} before wrapping, or leave device=None"
        )
    (orig,) = devices
    model.to(dev)
    try:
        yield dev
    finally:
        model.to(orig)


def autocast(dev: torch.device, amp: bool | torch.dtype) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast (or the dtype given) on ``dev`` when ``amp``; a no-op otherwise."""
    if amp is False or amp is None:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp is True else amp
    if not isinstance(dtype, torch.dtype):
        raise HeadkitError(f"amp must be a bool or a torch dtype, got {amp!r}")
    return torch.autocast(device_type=dev.type, dtype=dtype)


def progress_bar(it: Iterable[Any], total: int | None, desc: str, enabled: bool) -> Iterable[Any]:
    """A tqdm bar around ``it`` when ``enabled``."""
    if not enabled:
        return it
    from tqdm.auto import tqdm

    bar: Iterable[Any] = tqdm(it, total=total, desc=desc, leave=False, dynamic_ncols=True)
    return bar


def _sampler_ids(loader: Iterable[Any]) -> tuple[Tensor | None, str]:
    """The data set indices a DistributedSampler hands this rank, in loader order."""
    if not isinstance(loader, DataLoader):
        return None, f"{type(loader).__name__} (shards concatenated in rank order)"
    sampler: Any = loader.sampler
    bs = getattr(loader, "batch_sampler", None)
    if not isinstance(sampler, DistributedSampler) and bs is not None:
        sampler = getattr(bs, "sampler", sampler)
    if not isinstance(sampler, DistributedSampler):
        name = type(sampler).__name__
        return None, f"{name} (shards concatenated in rank order)"
    if getattr(loader, "in_order", True) is False:
        raise HeadkitError(
            "a DataLoader with in_order=False yields batches out of its DistributedSampler's "
            "order, so the padding duplicates cannot be found; use in_order=True"
        )
    ids = torch.tensor(list(iter(sampler)), dtype=torch.long)
    return ids, "DistributedSampler (data set order, padding duplicates dropped)"


# ----------------------------------------------------------------------------- extraction


def _safe(key: LayerSpec) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in str(key))


@dataclass
class Extracted:
    """What one extraction pass produced (the internal form of `Features`)."""

    feats: dict[LayerSpec, Tensor]
    rows: dict[LayerSpec, Rows]
    labels: Tensor | None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Number of samples."""
        return next(iter(self.rows.values())).n if self.rows else 0


class _Sink:
    """Collects one layer's rows: in memory, or appended to a file."""

    def __init__(self, path: str | None, out_device: torch.device | None) -> None:
        self.writer = FileWriter(path) if path is not None else None
        self.chunks: list[Tensor] = []
        self.out_device = out_device

    def add(self, f: Tensor) -> None:
        if self.writer is not None:
            self.writer.write(f)
        else:
            self.chunks.append(f.to(self.out_device or f.device, torch.float32))

    def tensor(self) -> Tensor:
        out = torch.cat(self.chunks)
        self.chunks = []
        return out


def _layer_paths(folder: str, keys: Sequence[LayerSpec], prefix: str = "") -> dict[LayerSpec, str]:
    out: dict[LayerSpec, str] = {}
    used: set[str] = set()
    for k in keys:
        base = _safe(k)
        name, i = base, 1
        while name in used:
            i += 1
            name = f"{base}~{i}"
        used.add(name)
        out[k] = os.path.join(folder, f"{prefix}{name}.f32")
    return out


@dataclass(frozen=True)
class ExtractOptions:
    """How features are extracted: the options `extract_features`, `layer_sweep`,
    `recommend_layer` and the LiDAR views share (see `extract_features` for each)."""

    pool: Pool = "auto"
    device: torch.device | str | None = None
    max_samples: int | None = None
    store: str | os.PathLike[str] | None = None
    progress: bool = True
    amp: bool | torch.dtype = False
    distributed: bool | None = None
    out_device: torch.device | str | None = "cpu"


def extract(
    model: object,
    loader: Iterable[Any],
    layers: Sequence[LayerSpec] | LayerSpec | None,
    opts: ExtractOptions,
    *,
    desc: str = "extract features",
    where: str = "extract_features",
) -> Extracted:
    """`extract_features` with the facts of the run and readers for every layer."""
    pool, device, max_samples, store = opts.pool, opts.device, opts.max_samples, opts.store
    progress, amp, distributed, out_device = (
        opts.progress,
        opts.amp,
        opts.distributed,
        opts.out_device,
    )
    model = check_module(model, where)
    if max_samples is not None and (isinstance(max_samples, bool) or max_samples <= 0):
        raise HeadkitError(f"max_samples must be a positive int, got {max_samples!r}")
    if isinstance(loader, (Tensor, Mapping)) or not isinstance(loader, Iterable):
        raise HeadkitError(
            f"loader must be an iterable of batches (a DataLoader or a list of batches), got "
            f"{type(loader).__name__}"
        )
    d = dist_state(distributed)
    if layers is None:
        layers = default_layers(model)
    # extraction needs no gradient sync; DDP's buffer broadcast would make every forward a
    # collective (a hang when shards have different numbers of batches): run its module
    runner = model.module if isinstance(model, DistributedDataParallel) else model
    folder = None if store is None else os.fspath(store)
    if folder is not None:
        if out_device is not None and torch.device(out_device).type != "cpu":
            raise HeadkitError(
                f"store= keeps features on disk; out_device must be 'cpu', got {out_device}"
            )
        os.makedirs(folder, exist_ok=True)
    out_dev = None if out_device is None else torch.device(out_device)
    ids, sampler_note = _sampler_ids(loader) if d.on else (None, "")
    local_cap = max_samples
    if d.on and max_samples is not None:
        local_cap = -(-max_samples // d.world)
    t0 = time.perf_counter()
    tap = LayerTap(runner, layers, pool=pool, detach=True, stop_early=True)
    sinks: dict[LayerSpec, _Sink] = {}
    labels: list[Tensor] = []
    seen = 0
    has_labels: bool | None = None
    was_training = runner.training
    dev = torch.device("cpu")
    total = len(loader) if isinstance(loader, Sized) else None
    try:
        with placed(model, device) as dev:
            runner.eval()
            part = f".part{d.rank}-" if d.on else ""
            paths = _layer_paths(folder, tap.keys, part) if folder is not None else {}
            sinks = {k: _Sink(paths.get(k), out_dev) for k in tap.keys}
            with torch.no_grad(), autocast(dev, amp):
                for batch in progress_bar(loader, total, desc, progress and d.main):
                    b = split_batch(batch)
                    if has_labels is None:
                        has_labels = b.labels is not None
                    elif has_labels != (b.labels is not None):
                        raise HeadkitError("some batches have labels and some do not")
                    out = tap(*move(b.args, dev), **move(b.kwargs, dev))
                    first = next(iter(out.values()))
                    if not isinstance(first, Tensor):
                        raise HeadkitError(
                            f"layer {tap.keys[0]!r} gave {type(first).__name__}, not a tensor; "
                            "pass pool= (a callable) that turns it into (B, ...) features"
                        )
                    n = int(first.shape[0])
                    take = n if local_cap is None else min(n, local_cap - seen)
                    if b.labels is not None and b.labels.shape[0] != n:
                        raise HeadkitError(f"a batch has {n} inputs but {b.labels.shape[0]} labels")
                    for k in tap.keys:
                        f = out[k]
                        if not isinstance(f, Tensor) or f.shape[0] != n:
                            raise HeadkitError(
                                f"layer {k!r} gave {type(f).__name__} "
                                f"{fmt_shape(f.shape) if isinstance(f, Tensor) else ''} for a batch "
                                f"of {n}; every layer must give (B, ...) features"
                            )
                        sinks[k].add(f[:take].reshape(take, -1).float())
                    if b.labels is not None:
                        labels.append(b.labels[:take].cpu())
                    seen += take
                    if local_cap is not None and seen >= local_cap:
                        break
    except BaseException:
        for s in sinks.values():
            if s.writer is not None:
                s.writer.abort()
        raise
    finally:
        tap.close()
        runner.train(was_training)
    info: dict[str, Any] = {
        "device": str(dev),
        "amp": str(amp).replace("torch.", "") if amp else False,
        "pool": tap.pool
        if isinstance(tap.pool, str) or tap.pool is None
        else getattr(tap.pool, "__name__", "callable"),
        "extract_s": 0.0,
    }
    local_labels = torch.cat(labels) if labels else None
    if not d.on:
        if seen == 0:
            for s in sinks.values():
                if s.writer is not None:
                    s.writer.abort()
            raise HeadkitError(f"{where}: the loader yielded no samples")
        feats, rows = _finish_local(sinks)
        info["extract_s"] = round(time.perf_counter() - t0, 3)
        return Extracted(feats, rows, local_labels, info)
    result = _gather(d, sinks, local_labels, has_labels, seen, ids, folder, out_dev, where)
    n = result.n
    if max_samples is not None and n > max_samples:
        keep = torch.arange(max_samples)
        result = Extracted(
            {k: v[:max_samples] for k, v in result.feats.items()},
            {k: r.select(keep) for k, r in result.rows.items()},
            None if result.labels is None else result.labels[:max_samples],
            result.info,
        )
    result.info.update(info)
    result.info["extract_s"] = round(time.perf_counter() - t0, 3)
    result.info["distributed"] = {
        "world_size": d.world,
        "sampler": sampler_note,
        **result.info.get("distributed", {}),
    }
    return result


def _finish_local(
    sinks: dict[LayerSpec, _Sink],
) -> tuple[dict[LayerSpec, Tensor], dict[LayerSpec, Rows]]:
    feats: dict[LayerSpec, Tensor] = {}
    rows: dict[LayerSpec, Rows] = {}
    for k, s in sinks.items():
        if s.writer is not None:
            path, n, dim = s.writer.finish()
            feats[k] = open_stored(path, n, dim)
            rows[k] = Rows(path, (n, dim))
        else:
            feats[k] = s.tensor()
            rows[k] = Rows(feats[k])
    return feats, rows


def _gather(
    d: Dist,
    sinks: dict[LayerSpec, _Sink],
    labels: Tensor | None,
    has_labels: bool | None,
    seen: int,
    ids: Tensor | None,
    folder: str | None,
    out_dev: torch.device | None,
    where: str,
) -> Extracted:
    """Every rank's rows, in one order on every rank (see `scatter_positions`)."""
    kinds = d.all_objects((has_labels, ids is not None))
    if len({k[1] for k in kinds}) > 1:
        raise HeadkitError(
            f"{where}: some ranks' loaders use a DistributedSampler and others do not; give every "
            "rank the same kind of loader"
        )
    present = {k[0] for k in kinds if k[0] is not None}
    if len(present) > 1:
        raise HeadkitError(f"{where}: some ranks' loaders yield labels and others do not")
    sizes = d.sizes(seen)
    if sum(sizes) == 0:
        raise HeadkitError(f"{where}: the loaders of all {d.world} ranks yielded no samples")
    local: dict[LayerSpec, Rows] = {}
    local_feats: dict[LayerSpec, Tensor] = {}
    for k, s in sinks.items():
        if s.writer is not None:
            path, n, dim = s.writer.finish()
            local[k] = Rows(path, (n, dim))
        else:
            local_feats[k] = s.tensor() if s.chunks else torch.zeros(0, 0)
            local[k] = Rows(local_feats[k])
    widths = d.all_objects({k: r.d for k, r in local.items() if r.n > 0})
    width: dict[LayerSpec, int] = {}
    for w in widths:
        for k, v in w.items():
            if width.setdefault(k, v) != v:
                raise HeadkitError(
                    f"{where}: layer {k!r} has width {width[k]} on one rank and {v} on another"
                )
    all_ids = None if ids is None else d.gather_var(ids[:seen])
    positions, total, dropped = scatter_positions(sizes, all_ids)
    if ids is None:
        _check_not_duplicated(d, local, sizes, where)
    gathered_labels = None
    if present == {True}:
        lab = labels if labels is not None else torch.zeros(0, dtype=torch.long)
        parts = d.gather_var(lab)
        gathered_labels = torch.empty(total, dtype=torch.long)
        for p, lab_r in zip(positions, parts, strict=True):
            keep = p >= 0
            gathered_labels[p[keep]] = lab_r[keep]
    shared = _shared_folder(d, folder) if folder is not None else False
    write_files = folder is not None and (d.main or not shared)
    feats: dict[LayerSpec, Tensor] = {}
    rows: dict[LayerSpec, Rows] = {}
    final_paths = _layer_paths(folder, list(local)) if folder is not None else {}
    for k, r in local.items():
        dim = width.get(k, 0)
        if folder is not None:
            out = FileWriter(final_paths[k], n=total, d=dim) if write_files else None
            _gather_rows(d, r, dim, sizes, positions, out.write_at if out else None)
            if out is not None:
                out.finish()
        else:
            dest = torch.empty(total, dim, device=out_dev or r.device)

            def put(pos: Tensor, block: Tensor, dest: Tensor = dest) -> None:
                dest.index_copy_(0, pos.to(dest.device), block.to(dest.device))

            _gather_rows(d, r, dim, sizes, positions, put)
            feats[k] = dest
            rows[k] = Rows(dest)
    if folder is not None:
        d.barrier()  # rank 0's files are complete before anyone maps them
        for k, r in local.items():
            path = final_paths[k]
            feats[k] = open_stored(path, total, width.get(k, 0))
            rows[k] = Rows(path, (total, width.get(k, 0)))
            if r.path is not None:
                os.remove(r.path)
    info = {"distributed": {"n_per_rank": sizes, "duplicates_dropped": dropped}}
    return Extracted(feats, rows, gathered_labels, info)


def _gather_rows(
    d: Dist,
    local: Rows,
    dim: int,
    sizes: list[int],
    positions: list[Tensor],
    put: Any,
) -> None:
    """All-gather ``local`` rows in blocks and hand each rank's block to ``put(pos, rows)``."""
    m = max(sizes)
    block = max(1, (32 << 20) // max(1, 4 * dim))
    dev = d.device
    for s in range(0, m, block):
        e = min(m, s + block)
        buf = torch.zeros(e - s, dim, device=dev)
        k = max(0, min(local.n, e) - s)
        if k > 0:
            buf[:k] = local.span(s, s + k).to(dev)
        outs = [torch.empty_like(buf) for _ in range(d.world)]
        torch.distributed.all_gather(outs, buf)
        if put is None:
            continue
        for r, o in enumerate(outs):
            kr = max(0, min(sizes[r], e) - s)
            if kr == 0:
                continue
            p = positions[r][s : s + kr]
            keep = p >= 0
            if bool(keep.any()):
                put(p[keep], o[:kr][keep.to(o.device)].cpu())
    local.release()


def _check_not_duplicated(
    d: Dist, local: dict[LayerSpec, Rows], sizes: list[int], where: str
) -> None:
    """Refuse shards that are all the same data (every rank iterated the whole data set)."""
    if len(set(sizes)) != 1 or sizes[0] == 0:
        return
    key = next(iter(local))
    r = local[key]
    s1 = torch.zeros((), dtype=torch.float64)
    s2 = torch.zeros((), dtype=torch.float64)
    for block in r.chunks(r.block_rows(itemsize=8)):
        b = block.double().cpu()
        s1 += b.sum()
        s2 += b.square().sum()
    prints = d.all_objects((float(s1), float(s2)))
    ref = prints[0]
    same = all(
        abs(p[0] - ref[0]) <= 1e-9 * (abs(ref[0]) + 1e-12)
        and abs(p[1] - ref[1]) <= 1e-9 * (abs(ref[1]) + 1e-12)
        for p in prints[1:]
    )
    if same:
        raise HeadkitError(
            f"{where} under torch.distributed: all {d.world} ranks extracted the same {sizes[0]} "
            "samples, so gathering them would count every sample once per rank. Give each rank "
            "its own shard (a DataLoader with a DistributedSampler), or pass distributed=False "
            "to extract on this rank alone"
        )


def _shared_folder(d: Dist, folder: str) -> bool:
    """Whether this rank sees rank 0's files in ``folder`` (a shared file system)."""
    token = secrets.token_hex(8) if d.main else ""
    token = d.broadcast_object(token)
    mark = os.path.join(folder, f".headkit-{token}")
    if d.main:
        with open(mark, "w") as fh:
            fh.write(token)
    d.barrier()
    shared = os.path.exists(mark)
    d.barrier()
    if d.main:
        os.remove(mark)
    return shared


def extract_features(
    model: nn.Module,
    loader: Iterable[Any],
    layers: Sequence[LayerSpec] | LayerSpec | None = None,
    *,
    pool: Pool = "auto",
    device: torch.device | str | None = None,
    max_samples: int | None = None,
    store: str | os.PathLike[str] | None = None,
    progress: bool = True,
    amp: bool | torch.dtype = False,
    distributed: bool | None = None,
    out_device: torch.device | str | None = "cpu",
) -> Features:
    """Features of several layers in one pass over the data.

    Runs the model in eval mode under ``torch.no_grad`` through a `LayerTap` (stopping after the
    deepest tap), pools, flattens to ``(N, D)`` and keeps float32 copies on the CPU (or on
    ``out_device``). With ``store`` the features are streamed to ``<layer>.f32`` files in that
    folder and come back memory-mapped, for data sets larger than memory.

    Batches: an inputs tensor; ``(inputs, labels, *extra)``; or a dict (Hugging Face style):
    the label key (``labels``/``label``/``y``) is taken out and the other entries are passed to
    the model as keywords (``model(**batch)``; an ``attention_mask`` reaches the tap, so
    ``pool="mean"`` skips padding), except a lone ``image``/``input``/``x`` entry, which is
    passed positionally.

    Devices: ``device`` is where the model runs. None runs it where its weights are; another
    device moves the model there for the pass and back afterwards (a model spread over several
    devices, or already wrapped in DDP/FSDP, is never moved: leave ``device=None``). Inputs are
    moved to it batch by batch; features leave it as float32 for ``out_device``.

    Distributed: under an initialised ``torch.distributed`` process group with 2+ ranks
    (``distributed=None``, or ``True``), each rank iterates its own shard and every rank returns
    the features and labels of all ranks, the same on every rank. With a `DistributedSampler`
    (the loader's ``sampler`` or ``batch_sampler.sampler``) the result is in data-set order and
    the samples the sampler repeats to pad the data set to a multiple of the world size are
    dropped, so it equals one process on the whole data set (a sampler with ``drop_last=True``
    leaves out the tail it drops). With any other loader the shards are concatenated in rank
    order, as they are: make them disjoint (ranks that extracted exactly the same samples are
    refused). ``max_samples`` then caps the total over ranks. ``distributed=False`` extracts on
    this rank alone. A DDP-wrapped model is run through its ``.module`` (no collective per
    batch).

    Args:
        model: the encoder (any model `LayerTap` takes).
        loader: an iterable of batches (see above).
        layers: layer specs, as for `LayerTap` (default: the model's default layers: every
            timm index for timm models, the top-level children otherwise).
        pool: pooling, as for `LayerTap` (default ``"auto"``: the pool that fits the model);
            outputs are flattened after it.
        device: where to run the model (see above).
        max_samples: stop after this many samples (in total over ranks).
        store: folder for ``<layer>.f32`` files (row-major float32 ``(N, D)``), or None to keep
            the features in memory.
        progress: show a tqdm progress bar (rank 0 only).
        amp: run the model under ``torch.autocast`` in bfloat16 (or the dtype given);
            features are still returned as float32.
        distributed: None (gather when a process group of 2+ ranks is initialised), True or
            False.
        out_device: where the returned features live (default the CPU; None: the model's
            device). Must be the CPU with ``store``.

    Returns:
        `Features` with ``feats`` ``{layer: (N, D)}`` and ``labels`` ``(N,)`` (or None).

    Raises:
        HeadkitError: not a module, an empty loader, unknown layers, batches of inconsistent
            label presence, float labels, or (distributed) ranks that extracted the same data.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from headkit.probe import extract_features
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> data = [(torch.randn(5, 4), torch.randint(0, 2, (5,))) for _ in range(3)]
        >>> feats, labels = extract_features(net, data, ["0", "2"], progress=False)
        >>> feats["0"].shape, labels.shape
        (torch.Size([15, 8]), torch.Size([15]))
    """
    opts = ExtractOptions(pool, device, max_samples, store, progress, amp, distributed, out_device)
    ex = extract(model, loader, layers, opts)
    return Features(ex.feats, ex.labels)
