"""The official segmentation labels without the full-resolution K-channel tensor.

The official tail (``shared/design/edaformer.md`` section 6) resizes the stride-8 logits ``[K, h, w]``
bilinearly (align_corners=False) to the network input size, then to the image size (skipped when the
two are equal), then takes the argmax over the K classes. Done literally that is K values per image
pixel: 7.2 GB for 150 classes at 4000x3000, and twice the network's time at 640x480 on a CPU. This
module gives the same labels from the small logits.

Why it can:

- Both resizes are separable: image row ``y`` reads two network rows, each of which reads two logit
  rows, the same for every class, and likewise for columns (:class:`AxisPlan`). The weights are
  non-negative and sum to one, so a class's value at a pixel lies between the minimum and the maximum of
  its logits in the pixel's *window* (the logit rows x columns it reads), up to float32 rounding.
- Image pixels are grouped into *cells*, those with the same window (consecutive image rows whose
  window starts at the same logit row, times the same for columns). In a cell, class ``k`` cannot be
  the argmax if its window maximum is below the largest window minimum of any class (the cell's
  *reference* class has it), nor if it is below the reference class at every logit of the window (then
  it is below it at every pixel, since both are the same weighted sums). In real logit maps most cells
  keep one class, which is then the label of the whole cell; the others keep a few. Both tests leave a
  slack of :data:`SLACK` x max|logit| for rounding.
- The remaining candidates are evaluated at every pixel of their cell's tiles as differences to the
  reference, with both resizes composed into one weight per window logit (float32; within a few
  roundings of the kernel's values): along the tile's rows first (a candidate below the reference on
  every row is dropped there), then along its columns. Each pixel's largest difference (0 for the
  reference itself) and the candidates within the slack of it come from scatter-max / scatter-sum over
  the tile's candidates, all cells of a step at once.
- Where two candidates come within the slack of each other at a pixel of a tile -- a near-tie, or an
  exact tie -- the tile's candidates are evaluated again exactly as ``F.interpolate`` evaluates them:
  the first resize at the network pixels the tile reads, then the second, each with the kernel's own
  float32 operations (:mod:`.bilinear_kernel`). The label is the argmax, the first class on ties like
  ``torch.argmax``. So the labels are the official ones bit for bit wherever the probe of
  :func:`.bilinear_kernel.kernel_arithmetic` found the device's rounding rules, ties included.

Confidence (the softmax probability of the top class) needs every class at every pixel; it is computed
band by band of image rows (:func:`official_confidence`), at about the literal path's cost but in
bounded memory.

Memory: every intermediate holds at most about ``budget`` float32 values (row bands, chunks of
candidates), besides the output arrays, and the work goes in steps of :data:`STEP` values; with the
default budget the extra memory at 4000x3000 with 150 classes stays far below 64 MB
(``test/test_official_labels.py`` measures it).

Non-finite logits (a diverged network) are outside the contract: the labels are those of the logits with
NaN read as 0 and +-inf as +-:data:`NON_FINITE` -- valid classes, never an error -- where the literal
argmax would return a NaN's index; the confidence is computed from the logits as they are.
Everything is plain torch, so it runs where the logits are (CPU or CUDA).
"""
from __future__ import annotations

import bisect
import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .bilinear_kernel import (ROUNDED_SEPARATELY, GatheredTaps, KernelArithmetic, Taps, channel_vectorised,
                              kernel_arithmetic, resize_samples, resized_channels_last, tail_classes, taps)

#: Default bound on the number of float32 values in any one intermediate tensor (8 MiB).
DEFAULT_BUDGET = 1 << 21
#: Float32 values of the largest intermediate of one step (a few classes' window extremes, a few cells'
#: candidates on their pixels): small enough that a step's buffers stay in a core's cache and come back
#: from the allocator for the next step. Larger buffers are fresh memory each call, and their page
#: faults cost more than the arithmetic.
STEP = 1 << 17
#: Longest run of image rows (columns) evaluated together as one tile; longer cells are split.
MAX_TILE = 16
#: An index beyond any image (tile padding), small enough that FAR * width + FAR fits in int64.
FAR = 1 << 40
#: What +-inf logits are read as: finite, and far enough from float32's limit that no weighted sum or
#: difference of two overflows.
NON_FINITE = 2.0 ** 100
#: Pruning slack, relative to max|logit|: far above the float32 rounding of the two resizes (a few
#: units of 2**-24), far below any gap that matters.
SLACK = 2.0 ** -18


def label_tensor_dtype(num_classes: int) -> torch.dtype:
    """uint8 up to 256 classes, int32 above (the caller narrows to uint16 on the host)."""
    return torch.uint8 if num_classes <= 256 else torch.int32


@dataclass(frozen=True)
class Stages:
    """The official two resizes of one axis: logits to network (``first``), network to image
    (``second``, None when the second resize is skipped)."""

    first: Taps
    second: Taps | None


def axis_stages(n_logit: int, n_network: int, n_image: int, resized_twice: bool, source_fused: bool) -> Stages:
    """The kernel's taps along one axis; ``resized_twice`` is False when the official path skips the
    second resize (network size equal to the image size in both axes)."""
    first = taps(n_logit, n_network, source_fused)
    return Stages(first, taps(n_network, n_image, source_fused) if resized_twice else None)


def _read(axis: Taps) -> tuple[np.ndarray, np.ndarray]:
    """The two inputs each output reads; a zero-weight tap reads the first input again (same value for
    finite samples), so windows hold only what contributes."""
    return axis.index0, np.where(axis.weight1 == 0, axis.index0, axis.index1)


@dataclass(frozen=True)
class AxisPlan:
    """One image axis in cells and tiles, with the taps of both resizes per tile.

    Image index ``i`` reads the logit indices ``cell_start[c] .. cell_start[c] + window - 1`` of its
    cell ``c = cell_of[i]``. Each cell is cut into ``cell_tiles[c]`` tiles of consecutive indices, from
    tile ``cell_first_tile[c]`` on; tile ``t`` (of cell ``tile_cell[t]``) holds the image indices
    ``members[t]`` (-1 = padding). ``composed[t]`` gives each member's value as one weighted sum of the
    window (to within a few float32 roundings of the kernel's). Exactly as the kernel: the tile's network
    indices ``network[t]`` come from the window with the taps ``first`` (indices into the window,
    ``[G, M]``), and its members from those with ``second`` (indices into ``network[t]``, ``[G, L]``;
    None when the second resize is skipped, then ``network`` = members).
    """

    window: int
    cell_start: torch.Tensor  # [U] int64, increasing
    cell_of: torch.Tensor  # [n_image] int64
    cell_first_tile: torch.Tensor  # [U] int64
    cell_tiles: torch.Tensor  # [U] int64
    tile_cell: torch.Tensor  # [G] int64
    members: torch.Tensor  # [G, L] int64
    members_or_far: torch.Tensor  # [G, L] int64: padding as FAR (beyond any image)
    composed: torch.Tensor  # [G, L, window] float32: both resizes in one weight (not the kernel's rounding)
    first: GatheredTaps  # [G, M]
    second: GatheredTaps | None  # [G, L]

    @property
    def cells(self) -> int:
        return int(self.cell_start.shape[0])

    @property
    def tile_length(self) -> int:
        return int(self.members.shape[1])


def axis_plan(stages: Stages, n_logit: int, n_image: int, device: torch.device | str = "cpu",
              max_tile: int = MAX_TILE) -> AxisPlan:
    """Cells and tiles of one axis (built on the host: small arrays). A cell away from the clamped edges
    is at most ``ceil(n_image / n_logit)`` long; it is cut into equal tiles of at most ``max_tile`` (the
    longer cells at the edges into more tiles, so they do not set the tile length)."""
    first0, first1 = _read(stages.first)
    if stages.second is None:
        net0 = net1 = np.arange(n_image)
    else:
        net0, net1 = _read(stages.second)
    logit_reads = np.stack([first0[net0], first1[net0], first0[net1], first1[net1]], 1)
    lowest, highest = logit_reads.min(1), logit_reads.max(1)
    window = int((highest - lowest).max()) + 1
    start = np.minimum(lowest, n_logit - window)

    positions = np.arange(n_image)
    new_cell = np.r_[True, start[1:] != start[:-1]]
    cell_of = np.cumsum(new_cell) - 1
    cell_first = np.maximum.accumulate(np.where(new_cell, positions, 0))
    typical = -(-n_image // n_logit)  # a cell's length away from the clamped edges (at most)
    length = -(-typical // -(-typical // max_tile))  # cut into equal tiles of at most max_tile
    tile_of = np.cumsum(new_cell | ((positions - cell_first) % length == 0)) - 1
    tiles = int(tile_of[-1]) + 1
    tile_first = np.searchsorted(tile_of, np.arange(tiles))
    tile_cell = cell_of[tile_first]
    slot = positions - tile_first[tile_of]
    members = np.full((tiles, int(slot.max()) + 1), -1, dtype=np.int64)
    members[tile_of, slot] = positions
    filled = np.where(members >= 0, members, members[:, :1])  # padding repeats the tile's first index

    # the network indices each tile reads, sorted and unique, padded with the last one
    if stages.second is None:
        network, second = filled, None
    else:
        reads = np.sort(np.concatenate([net0[filled], net1[filled]], 1), 1)
        fresh = np.c_[np.ones((tiles, 1), bool), reads[:, 1:] != reads[:, :-1]]
        count = fresh.sum(1)
        network = np.repeat(reads[:, -1:], int(count.max()), 1)
        rank = np.cumsum(fresh, 1) - 1
        network[np.nonzero(fresh)[0], rank[fresh]] = reads[fresh]
        # where each member's two network reads sit in its tile's list: search all rows at once, each
        # row's values raised by its own offset (rows are sorted, so the whole is)
        stride = len(stages.first.index0) + 1
        offset = np.arange(tiles)[:, None] * stride
        flat = (network + offset).ravel()

        def locate(index: np.ndarray) -> np.ndarray:
            return np.searchsorted(flat, index + offset) - np.arange(tiles)[:, None] * network.shape[1]

        second = Taps(locate(net0[filled]), locate(net1[filled]), stages.second.weight0[filled],
                      stages.second.weight1[filled])
    cell_start = start[new_cell]
    first = Taps(first0[network] - cell_start[tile_cell][:, None], first1[network] - cell_start[tile_cell][:, None],
                 stages.first.weight0[network], stages.first.weight1[network])
    cells = int(cell_of[-1]) + 1
    composed = _composed(stages, start, window)[filled]

    def on_device(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(device)

    return AxisPlan(window, on_device(cell_start), on_device(cell_of),
                    on_device(np.searchsorted(tile_cell, np.arange(cells))),
                    on_device(np.bincount(tile_cell, minlength=cells)), on_device(tile_cell), on_device(members),
                    on_device(np.where(members >= 0, members, FAR)), on_device(composed.astype(np.float32)),
                    GatheredTaps.of(first, torch.device(device)),
                    None if second is None else GatheredTaps.of(second, torch.device(device)))


def _composed(stages: Stages, start: np.ndarray, window: int) -> np.ndarray:
    """Both resizes as one weight per image index and window position ``[n_image, window]`` (float64)."""
    first0, first1 = _read(stages.first)
    n_image = start.size
    if stages.second is None:
        net = [(np.arange(n_image), np.ones(n_image))]
    else:
        net0, net1 = _read(stages.second)
        net = [(net0, stages.second.weight0.astype(np.float64)), (net1, stages.second.weight1.astype(np.float64))]
    composed = np.zeros((n_image, window))
    rows = np.arange(n_image)
    for network, outer in net:
        for logit, inner in ((first0, stages.first.weight0), (first1, stages.first.weight1)):
            np.add.at(composed, (rows, logit[network] - start), outer * inner[network].astype(np.float64))
    return composed


@functools.lru_cache(maxsize=16)
def _cached_plan(n_logit: int, n_network: int, n_image: int, resized_twice: bool, source_fused: bool,
                 device: str) -> AxisPlan:
    """:func:`axis_plan` of these sizes, remembered (a pure function of its arguments; a stream of frames
    asks for the same few)."""
    stages = axis_stages(n_logit, n_network, n_image, resized_twice, source_fused)
    return axis_plan(stages, n_logit, n_image, device)


@torch.inference_mode()  # hundreds of small operations: the autograd bookkeeping alone costs ~5 %
def official_labels(logits: torch.Tensor, network_size: tuple[int, int], image_size: tuple[int, int],
                    with_confidence: bool = False, budget: int = DEFAULT_BUDGET,
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Labels ``[H, W]`` (uint8 up to 256 classes, else int32) equal to ``argmax`` over classes of the
    official two bilinear resizes of ``logits`` ``[1, K, h, w]`` (to ``network_size``, then to
    ``image_size``), and with ``with_confidence`` the top class's softmax probability ``[H, W]``
    (float32); on the logits' device. ``budget`` bounds the values of any one intermediate tensor."""
    network_size, image_size = tuple(network_size), tuple(image_size)
    values = logits.detach()[0].float().contiguous()
    classes, height, width = values.shape
    device = values.device
    arithmetic = kernel_arithmetic(device)
    twice = network_size != image_size
    rows = _cached_plan(height, network_size[0], image_size[0], twice, arithmetic.source_fused, str(device))
    cols = _cached_plan(width, network_size[1], image_size[1], twice, arithmetic.source_fused, str(device))
    channels_last = logits.is_contiguous(memory_format=torch.channels_last)
    vectorised = (channel_vectorised(classes, channels_last, network_size, device),
                  twice and channel_vectorised(classes, resized_channels_last(logits), image_size, device))
    # one spare element at the end: the padding pixels of tiles are written there
    labels = torch.empty(image_size[0] * image_size[1] + 1, dtype=label_tensor_dtype(classes), device=device)
    finite, magnitude = values, _largest_magnitude(values)
    if not math.isfinite(magnitude):
        finite = torch.nan_to_num(values, nan=0.0, posinf=NON_FINITE, neginf=-NON_FINITE)
        magnitude = _largest_magnitude(finite)
    slack = SLACK * magnitude
    labeller = _Labeller(finite, rows, cols, arithmetic, vectorised, tail_classes(classes, arithmetic).to(device),
                         slack, budget, labels, image_size[1])
    rows_per_cell = -(-image_size[0] // rows.cells)
    per_band = max(1, min(budget // max(1, classes * width) - rows.window,
                          budget // (rows_per_cell * image_size[1])))
    for first_cell in range(0, rows.cells, per_band):
        labeller.band(first_cell, min(first_cell + per_band, rows.cells))
    image = labels[:-1].view(image_size)
    if not with_confidence:
        return image, None
    return image, official_confidence(values, network_size, image_size, arithmetic.source_fused, budget)


def cell_candidates(values: torch.Tensor, window_rows: int, window_cols: int, row_starts: torch.Tensor,
                    col_starts: torch.Tensor, slack: float, step: int,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For contiguous logits ``values`` ``[K, r, c]`` and the cells whose windows start at ``row_starts`` x
    ``col_starts`` (numbered row-major): the largest window minimum of any class ``[Ur * Uc]``, and the
    candidates -- the classes whose window maximum is not below it by more than ``slack`` -- as pairs
    ``cell``, ``cls`` (cell by cell, classes increasing), with each cell's number of candidates. A few
    classes at a time, about ``step`` logits each (two sweeps: minima, then maxima)."""
    classes = values.shape[0]
    per_step = max(1, step // max(1, values.shape[1] * values.shape[2]))
    rows, cols = _selection(row_starts), _selection(col_starts)

    def taken(extremes: torch.Tensor) -> torch.Tensor:
        return _take(_take(extremes, 1, rows), 2, cols)

    best_lower = None
    for first in range(0, classes, per_step):
        lower = taken(window_extremes(values[first:first + per_step], window_rows, window_cols, torch.minimum))
        part = lower.amax(0)
        best_lower = part if best_lower is None else torch.maximum(best_lower, part, out=best_lower)
    threshold = best_lower - slack
    # written cell by cell (classes last), so that the candidates come out cell by cell
    candidate = torch.empty((row_starts.numel(), col_starts.numel(), classes), dtype=torch.bool,
                            device=values.device)
    for first in range(0, classes, per_step):
        upper = taken(window_extremes(values[first:first + per_step], window_rows, window_cols, torch.maximum))
        torch.ge(upper, threshold, out=candidate[:, :, first:first + per_step].permute(2, 0, 1))
    cell, cls = torch.nonzero(candidate.view(-1, classes), as_tuple=True)
    return best_lower.flatten(), torch.bincount(cell, minlength=best_lower.numel()), cell, cls


def window_extremes(values: torch.Tensor, window_rows: int, window_cols: int,
                    extreme: Callable[..., torch.Tensor] = torch.maximum) -> torch.Tensor:
    """The ``extreme`` (:func:`torch.maximum` or :func:`torch.minimum`) of contiguous ``values`` ``[K, r, c]``
    over every ``window_rows x window_cols`` window: ``[K, r - window_rows + 1, c - window_cols + 1]``.

    Running extremes over the flat memory, shifted by one element (columns) and then by one row: every
    operation reads contiguous memory, and each pass fills one new buffer in place. Windows that would
    wrap into the next row are computed too and left out of the returned view."""
    classes, rows, cols = values.shape
    run = values.view(-1)
    for step, count in ((1, window_cols), (cols, window_rows)):
        if count == 1:
            continue
        size = run.numel() - (count - 1) * step
        shorter = extreme(run[:size], run[step:step + size])
        for shift in range(2 * step, count * step, step):
            extreme(shorter, run[shift:shift + size], out=shorter)
        run = shorter
    return run.as_strided((classes, rows - window_rows + 1, cols - window_cols + 1), (rows * cols, cols, 1))


def consecutive_chunks(sizes: torch.Tensor, limit: int) -> list[tuple[int, int]]:
    """Ranges ``[begin, end)`` covering ``sizes`` in order, each summing to at most ``limit`` (an item
    larger than ``limit`` makes a range of its own)."""
    ends = sizes.cumsum(0).tolist()
    ranges: list[tuple[int, int]] = []
    begin, done = 0, 0
    while begin < len(ends):
        end = max(bisect.bisect_right(ends, done + limit, lo=begin), begin + 1)
        ranges.append((begin, end))
        begin, done = end, ends[end - 1]
    return ranges


def _largest_magnitude(values: torch.Tensor) -> float:
    """max |values| (0 for none), without a temporary of their size."""
    if values.numel() == 0:
        return 0.0
    lowest, highest = torch.aminmax(values)
    return max(float(highest), -float(lowest))


def _selection(index: torch.Tensor) -> slice | torch.Tensor:
    """``index`` as a slice when it counts up by one (taking it then copies nothing), else as it is."""
    begin, last = index[[0, -1]].tolist()
    return slice(begin, last + 1) if last - begin == index.numel() - 1 else index


def _take(values: torch.Tensor, dim: int, selection: slice | torch.Tensor) -> torch.Tensor:
    """``values.index_select(dim, ...)`` of a :func:`_selection`."""
    if isinstance(selection, slice):
        return values.narrow(dim, selection.start, selection.stop - selection.start)
    return values.index_select(dim, selection)


def _taps_of(taps_: GatheredTaps, tile: torch.Tensor) -> GatheredTaps:
    """Per-item taps: the rows of ``taps_`` for each item's tile."""
    return GatheredTaps(*(part.index_select(0, tile) for part in (taps_.index0, taps_.index1, taps_.weight0,
                                                                   taps_.weight1)))


def _spread(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Item ``i`` of ``counts[i]`` repeated: for each repetition its item (``owner``) and its rank among
    that item's repetitions (``within``)."""
    owner = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    first = torch.cumsum(counts, 0) - counts
    return owner, torch.arange(owner.numel(), device=counts.device) - first.index_select(0, owner)


@dataclass(frozen=True)
class _Items:
    """Candidates on tiles, one item per (candidate, tile of its cell): the candidate's logits less those
    of the cell's reference, resized along the tile's rows ``[I, Lr, Sc]``; classes, row and column tile
    numbers and the item's *group* -- its tile's number among the tiles being labelled -- ``[I]`` each."""

    down: torch.Tensor
    classes: torch.Tensor
    row_tile: torch.Tensor
    col_tile: torch.Tensor
    group: torch.Tensor

    def narrow(self, begin: int, end: int) -> _Items:
        return _Items(*(part[begin:end] for part in self._parts()))

    def take(self, index: torch.Tensor) -> _Items:
        return _Items(*(part.index_select(0, index) for part in self._parts()))

    def _parts(self) -> tuple[torch.Tensor, ...]:
        return self.down, self.classes, self.row_tile, self.col_tile, self.group


@dataclass(frozen=True)
class _Groups:
    """The tiles being labelled (*groups*, cell by cell): row and column tile numbers and the cell's
    reference class ``[groups]``; per cell (in order) its number of tiles and of items."""

    row_tile: torch.Tensor
    col_tile: torch.Tensor
    reference: torch.Tensor
    tiles_per_cell: torch.Tensor
    items_per_cell: torch.Tensor


def _by_group(values: torch.Tensor, group: torch.Tensor, groups: int, reduce: str, initial: float) -> torch.Tensor:
    """``[groups, P]``: the ``reduce`` ("amax" or "amin") of the rows of float ``values`` ``[I, P]`` with
    the same ``group`` ``[I]`` (``initial`` where a group has none), as one scatter along the first
    dimension (the layout torch scatters fast)."""
    out = values.new_full((groups, values.shape[1]), initial)
    return out.scatter_reduce_(0, group[:, None].expand(values.shape), values, reduce)


@dataclass
class _Labeller:
    """Labels one band of row cells at a time into ``labels``, the flat image with one spare element
    at the end (where the padding pixels of tiles are written). A band's 2-D cells are numbered
    row-major (row cells x column cells)."""

    values: torch.Tensor  # [K, h, w] float32, contiguous
    rows: AxisPlan
    cols: AxisPlan
    arithmetic: KernelArithmetic
    vectorised: tuple[bool, bool]  # each resize: the CPU's channel-vectorised kernel
    tail: torch.Tensor  # [K] bool: classes in that kernel's scalar tail
    slack: float
    budget: int
    labels: torch.Tensor
    image_width: int

    @property
    def step(self) -> int:
        return min(self.budget, STEP)

    def band(self, first_cell: int, end_cell: int) -> None:
        """Label the image rows of row cells ``first_cell .. end_cell - 1``."""
        rows, cols = self.rows, self.cols
        logit_row, last_row = rows.cell_start[[first_cell, end_cell - 1]].tolist()
        part = self.values[:, logit_row:last_row + rows.window]
        best_lower, count, cell, cls = cell_candidates(part.contiguous(), rows.window, cols.window,
                                                       rows.cell_start[first_cell:end_cell] - logit_row,
                                                       cols.cell_start, self.slack, self.step)
        cell, cls, differences, reference = self._undominated(cell, cls, count, best_lower, first_cell)
        self._fill(first_cell, end_cell, reference)
        if cell.numel() == 0:
            return
        items, groups = self._items(cell, cls, differences, reference, first_cell)
        pixels, classes = rows.tile_length * cols.tile_length, self.values.shape[0]
        # per pixel, the sum over the candidates within the slack of its largest value of K + class:
        # below 2K exactly when one is (then it is K + its class); float64 holds every such sum exactly,
        # and torch scatters floats several times faster than integers
        near = torch.empty((groups.row_tile.numel(), pixels), dtype=torch.float64, device=cell.device)
        near_reference = groups.reference.to(near.dtype) + classes
        tiles_per_cell, items_per_cell = groups.tiles_per_cell, groups.items_per_cell
        group_ends = [0] + torch.cumsum(tiles_per_cell, 0).tolist()
        item_ends = [0] + torch.cumsum(items_per_cell, 0).tolist()
        for begin, end in consecutive_chunks(items_per_cell * self._approximate_size(), self.step):
            group_begin, group_end = group_ends[begin], group_ends[end]
            item_begin, item_end = item_ends[begin], item_ends[end]
            chunk = slice(group_begin, group_end)
            self._evaluate(items.narrow(item_begin, item_end), group_begin, near_reference[chunk], near[chunk])
        doubtful = torch.nonzero(near.amax(1) >= 2 * classes)[:, 0]
        label = near.sub_(classes)
        if doubtful.numel():
            self._relabel_exactly(label, doubtful, items, groups)
        per_write = max(1, self.step // (2 * pixels))
        for begin in range(0, groups.row_tile.numel(), per_write):
            part = slice(begin, begin + per_write)
            self.labels.scatter_(0, self._targets(groups.row_tile[part], groups.col_tile[part]).view(-1),
                                 label[part].to(self.labels.dtype).view(-1))

    def _approximate_size(self) -> int:
        """Float32 values of the largest intermediate of one candidate on one tile, composed weights."""
        rows, cols = self.rows, self.cols
        return rows.tile_length * max(cols.window, cols.tile_length)

    def _exact_size(self) -> int:
        """Float32 values of the largest intermediate of one candidate on one tile through the kernel's
        two resizes (float64 counted twice)."""
        rows, cols = self.rows, self.cols
        net_rows, net_cols = rows.first.index0.shape[1], cols.first.index0.shape[1]
        return 2 * max(rows.window * net_cols, net_rows * net_cols, net_rows * cols.tile_length,
                       rows.tile_length * cols.tile_length)

    def _fill(self, first_cell: int, end_cell: int, reference: torch.Tensor) -> None:
        """Every pixel of the band gets its cell's reference class."""
        rows, cols = self.rows, self.cols
        image_rows = torch.nonzero((rows.cell_of >= first_cell) & (rows.cell_of < end_cell))[:, 0]
        reference = reference.to(self.labels.dtype).view(-1, cols.cells)
        begin, end = int(image_rows[0]), int(image_rows[-1]) + 1
        band = reference.index_select(1, cols.cell_of).index_select(0, rows.cell_of[begin:end] - first_cell)
        self.labels[begin * self.image_width:end * self.image_width] = band.flatten()

    def _windows(self, cls: torch.Tensor, row_cell: torch.Tensor, col_cell: torch.Tensor) -> torch.Tensor:
        """Logits ``[P, Sr, Sc]`` of class ``cls[i]`` over the window of cell (``row_cell[i]``,
        ``col_cell[i]``)."""
        rows, cols, values = self.rows, self.cols, self.values
        _, height, width = values.shape
        corner = (cls * (height * width) + rows.cell_start.index_select(0, row_cell) * width
                  + cols.cell_start.index_select(0, col_cell))
        offsets = (torch.arange(rows.window, device=values.device)[:, None] * width
                   + torch.arange(cols.window, device=values.device))
        index = (corner[:, None, None] + offsets).view(-1)
        return values.view(-1).index_select(0, index).view(-1, rows.window, cols.window)

    def _undominated(self, cell: torch.Tensor, cls: torch.Tensor, count: torch.Tensor, best_lower: torch.Tensor,
                     first_cell: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """From the candidates of :func:`cell_candidates`: each cell's *reference* ``[cells]`` -- its first
        candidate whose window minimum is the cell's largest -- and the other candidates that are not
        below the reference (by more than the slack) at every logit of the window, with their window
        logits less the reference's ``[P, Sr, Sc]``."""
        cols = self.cols
        windows = self._windows(cls, cell // cols.cells + first_cell, cell % cols.cells)
        # every cell has one (the class whose window minimum is the largest is a candidate); the first
        is_reference = torch.nonzero(windows.amin((1, 2)) >= best_lower.index_select(0, cell))[:, 0]
        reference_cell = cell.index_select(0, is_reference)
        first = torch.ones_like(reference_cell, dtype=torch.bool)
        first[1:] = reference_cell[1:] != reference_cell[:-1]
        reference_pair = is_reference[first]  # [cells]
        reference = cls.index_select(0, reference_pair)
        own_reference = reference_pair.index_select(0, cell)
        pair = torch.arange(cell.numel(), device=cell.device)
        others = torch.nonzero((count > 1).index_select(0, cell) & (pair != own_reference))[:, 0]
        differences = windows.index_select(0, others) - windows.index_select(0, own_reference.index_select(0, others))
        kept = torch.nonzero(differences.amax((1, 2)) >= -self.slack)[:, 0]
        others = others.index_select(0, kept)
        return cell.index_select(0, others), cls.index_select(0, others), differences.index_select(0, kept), reference

    def _items(self, cell: torch.Tensor, cls: torch.Tensor, differences: torch.Tensor, reference: torch.Tensor,
               first_cell: int) -> tuple[_Items, _Groups]:
        """The candidates (as from :meth:`_undominated`) on the tiles of their cells: the items (cell by
        cell, each cell's candidate by candidate, each candidate's tile by tile) and the tiles.

        The differences are resized along the tile's rows here, and an item below the reference (by more
        than the slack) on every row of its tile is left out: it is below it on every pixel (a pixel's
        value is a convex combination of its row's)."""
        rows, cols = self.rows, self.cols
        cells, cell_rank, per_cell = torch.unique_consecutive(cell, return_inverse=True, return_counts=True)
        row_tile, col_tile, tiles_per_cell = self._tiles(cells // cols.cells + first_cell, cells % cols.cells)
        reference = reference.index_select(0, cells)
        group = cell_rank
        if tiles_per_cell is None:  # every cell is one tile: one item per candidate
            tiles_per_cell = torch.ones_like(per_cell)
        else:  # one item per candidate and tile
            reference = torch.repeat_interleave(reference, tiles_per_cell)
            pair, within = _spread(tiles_per_cell.index_select(0, cell_rank))
            first_tile = (torch.cumsum(tiles_per_cell, 0) - tiles_per_cell).index_select(0, cell_rank)
            group = first_tile.index_select(0, pair) + within
            differences, cls = differences.index_select(0, pair), cls.index_select(0, pair)
        item_rows = row_tile.index_select(0, group)
        down = torch.matmul(rows.composed.index_select(0, item_rows), differences)  # [I, Lr, Sc]
        items = _Items(down, cls, item_rows, col_tile.index_select(0, group), group)
        items = items.take(torch.nonzero(down.amax((1, 2)) >= -self.slack)[:, 0])
        group_cell = torch.repeat_interleave(torch.arange(cells.numel(), device=cell.device), tiles_per_cell)
        items_per_cell = torch.bincount(group_cell.index_select(0, items.group), minlength=cells.numel())
        return items, _Groups(row_tile, col_tile, reference, tiles_per_cell, items_per_cell)

    def _evaluate(self, items: _Items, first_group: int, reference: torch.Tensor, near: torch.Tensor) -> None:
        """Evaluate the items on their tiles (groups ``first_group`` on, whole; ``reference`` K + their
        reference classes): resized along the tile's columns they are differences to the reference (which
        is 0) at every pixel. ``near`` (rows from ``first_group`` on) gets, per pixel, the sum of K + class
        over the candidates that come within the slack of the pixel's largest value: K + the class where
        only one does. Where two or more do, rounding could order them either way (ties included): such
        tiles go through :meth:`_relabel_exactly`."""
        group = items.group - first_group
        values = torch.matmul(items.down, self.cols.composed.index_select(0, items.col_tile).transpose(1, 2))
        values = values.flatten(1)  # [I, pixels]
        threshold = _by_group(values, group, near.shape[0], "amax", 0.0).sub_(self.slack)
        torch.mul(threshold <= 0, reference[:, None], out=near)
        sums = (values >= threshold.index_select(0, group)).to(near.dtype)
        sums.mul_((items.classes + self.values.shape[0]).to(near.dtype)[:, None])
        near.scatter_add_(0, group[:, None].expand(sums.shape), sums)

    def _relabel_exactly(self, label: torch.Tensor, doubtful: torch.Tensor, items: _Items, groups: _Groups) -> None:
        """Label the pixels of the tiles ``doubtful`` (rows of ``label`` ``[groups, pixels]``) from the
        values of their candidates (the items and the reference) as the kernel computes them, the argmax
        being the first maximum as ``torch.argmax`` takes it on the official tensor: the smallest class
        with the largest value. Tiles in chunks within the budget."""
        rows, cols = self.rows, self.cols
        rank = torch.full((label.shape[0],), -1, dtype=torch.int64, device=label.device)
        rank[doubtful] = torch.arange(doubtful.numel(), device=label.device)
        item_rank = rank.index_select(0, items.group)
        inside = torch.nonzero(item_rank >= 0)[:, 0]
        cls = torch.cat([items.classes.index_select(0, inside), groups.reference.index_select(0, doubtful)])
        row_tile = torch.cat([items.row_tile.index_select(0, inside), groups.row_tile.index_select(0, doubtful)])
        col_tile = torch.cat([items.col_tile.index_select(0, inside), groups.col_tile.index_select(0, doubtful)])
        item_rank = torch.cat([item_rank.index_select(0, inside), torch.arange(doubtful.numel(), device=label.device)])
        per_group = torch.bincount(item_rank, minlength=doubtful.numel())
        beyond = float(self.values.shape[0])
        for begin, end in consecutive_chunks(per_group * self._exact_size(), self.budget):
            part = torch.nonzero((item_rank >= begin) & (item_rank < end))[:, 0]
            local, part_cls = item_rank.index_select(0, part) - begin, cls.index_select(0, part)
            part_rows, part_cols = row_tile.index_select(0, part), col_tile.index_select(0, part)
            windows = self._windows(part_cls, rows.tile_cell.index_select(0, part_rows),
                                    cols.tile_cell.index_select(0, part_cols))
            exact = self._resized(windows, part_cls, part_rows, part_cols).flatten(1)
            top = _by_group(exact, local, end - begin, "amax", -torch.inf)
            at_top = exact == top.index_select(0, local)
            classes = torch.where(at_top, part_cls.to(exact.dtype)[:, None], beyond)
            first = _by_group(classes, local, end - begin, "amin", beyond)
            label.index_copy_(0, doubtful[begin:end], first.to(label.dtype))

    def _tiles(self, row_cell: torch.Tensor, col_cell: torch.Tensor,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The tiles of the cells (``row_cell[i]``, ``col_cell[i]``), cell by cell: their row and column
        tile numbers and each cell's number of tiles (None when every cell is one tile)."""
        rows, cols = self.rows, self.cols
        row_tiles, col_tiles = rows.cell_tiles.index_select(0, row_cell), cols.cell_tiles.index_select(0, col_cell)
        row_first = rows.cell_first_tile.index_select(0, row_cell)
        col_first = cols.cell_first_tile.index_select(0, col_cell)
        if bool((row_tiles == 1).all()) and bool((col_tiles == 1).all()):
            return row_first, col_first, None
        per_cell = row_tiles * col_tiles
        of_cell, within = _spread(per_cell)
        col_tiles = col_tiles.index_select(0, of_cell)
        return (row_first.index_select(0, of_cell) + within // col_tiles,
                col_first.index_select(0, of_cell) + within % col_tiles, per_cell)

    def _resized(self, windows: torch.Tensor, cls: torch.Tensor, row_tile: torch.Tensor,
                 col_tile: torch.Tensor) -> torch.Tensor:
        """The kernel's two resizes of the window logits ``[I, Sr, Sc]`` at the pixels of the item's tile."""
        rows, cols, tail = self.rows, self.cols, self.tail[cls.clamp(max=self.tail.numel() - 1)]
        network = resize_samples(windows, _taps_of(rows.first, row_tile), _taps_of(cols.first, col_tile),
                                 self.arithmetic, self.vectorised[0], tail)
        if rows.second is None or cols.second is None:
            return network
        return resize_samples(network, _taps_of(rows.second, row_tile), _taps_of(cols.second, col_tile),
                              self.arithmetic, self.vectorised[1], tail)

    def _targets(self, row_tile: torch.Tensor, col_tile: torch.Tensor) -> torch.Tensor:
        """Flat index into ``labels`` ``[T, Lr, Lc]`` of each tile pixel (padding: the spare element)."""
        image_rows = self.rows.members_or_far.index_select(0, row_tile)[:, :, None]
        image_cols = self.cols.members_or_far.index_select(0, col_tile)[:, None, :]
        return (image_rows * self.image_width + image_cols).clamp_(max=self.labels.numel() - 1)


def _band_taps(axis: Taps, begin: int, end: int, offset: int, device: torch.device) -> GatheredTaps:
    """Outputs ``begin .. end - 1`` of ``axis``, their input indices counted from ``offset``."""
    part = Taps(axis.index0[begin:end] - offset, axis.index1[begin:end] - offset, axis.weight0[begin:end],
                axis.weight1[begin:end])
    return GatheredTaps.of(part, device)


def official_confidence(values: torch.Tensor, network_size: tuple[int, int], image_size: tuple[int, int],
                        source_fused: bool, budget: int = DEFAULT_BUDGET) -> torch.Tensor:
    """The top class's softmax probability ``[H, W]`` of the official two resizes of ``values``
    ``[K, h, w]``, computed for bands of image rows (every class, float32, the kernel's taps; the
    rounding of the sums may differ from the kernel's by an ulp, far below the probability's precision).
    """
    classes, height, width = values.shape
    twice = tuple(network_size) != tuple(image_size)
    rows = axis_stages(height, network_size[0], image_size[0], twice, source_fused)
    cols = axis_stages(width, network_size[1], image_size[1], twice, source_fused)
    device = values.device
    first_cols = GatheredTaps.of(cols.first, device)
    second_cols = None if cols.second is None else GatheredTaps.of(cols.second, device)
    confidence = torch.empty(image_size, device=device)
    per_band = max(1, budget // (classes * (image_size[1] + network_size[1])))
    for begin in range(0, image_size[0], per_band):
        end = min(begin + per_band, image_size[0])
        if rows.second is None:
            net_begin, net_end = begin, end
        else:
            net_begin = int(rows.second.index0[begin:end].min())
            net_end = int(rows.second.index1[begin:end].max()) + 1
        logit_begin = int(rows.first.index0[net_begin:net_end].min())
        logit_end = int(rows.first.index1[net_begin:net_end].max()) + 1
        part = values[:, logit_begin:logit_end]
        resized = resize_samples(part, _band_taps(rows.first, net_begin, net_end, logit_begin, device), first_cols,
                                 ROUNDED_SEPARATELY)
        if rows.second is not None and second_cols is not None:
            resized = resize_samples(resized, _band_taps(rows.second, begin, end, net_begin, device), second_cols,
                                     ROUNDED_SEPARATELY)
        top = resized.amax(0)
        confidence[begin:end] = torch.exp(resized - top).sum(0).reciprocal()
    return confidence
