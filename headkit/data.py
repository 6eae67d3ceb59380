"""Data helpers that the examples, the demo and ``headkit sweep`` share.

- `open_images` / `load_images`: image folders (``root/<class>/<image>``) and ``.npz`` arrays;
- `stratified_sample` / `stratified_split`: seeded stratified draws;
- `digits`: scikit-learn's 1,797 real 8x8 digits (they ship in the wheel: nothing is downloaded);
- `disrupted_digits`, `drop_right`, `augment`: the demo's task and SimCLR-style views.

Example:
    >>> from headkit.data import augment, digits
    >>> x, y = digits()
    >>> x.shape, augment(x[:4]).shape
    (torch.Size([1797, 1, 8, 8]), torch.Size([4, 1, 8, 8]))
"""

from __future__ import annotations

from ._app.data import DataFacts, ImageSource, load_images, open_images
from ._app.demo_data import DisruptedDigits, augment, digits, disrupted_digits, drop_right
from ._app.draws import stratified_sample, stratified_split

__all__ = [
    "DataFacts",
    "DisruptedDigits",
    "ImageSource",
    "augment",
    "digits",
    "disrupted_digits",
    "drop_right",
    "load_images",
    "open_images",
    "stratified_sample",
    "stratified_split",
]
