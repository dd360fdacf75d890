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
- The remaining candidates are evaluated at every pixel of their cell's tiles with both resizes
  composed into one weight per window logit (float32; within a few roundings of the kernel's values).
  Where a tile's top two values come within the slack of each other -- a near-tie, or an exact tie --
  its candidates are evaluated again exactly as ``F.interpolate`` evaluates them: the first resize at
  the network pixels the tile reads, then the second, each with the kernel's own float32 operations
  (:mod:`.bilinear_kernel`). The label is the argmax, the first class on ties like ``torch.argmax``.
  So the labels are the official ones bit for bit wherever the probe of
  :func:`.bilinear_kernel.kernel_arithmetic` found the device's rounding rules, ties included.

Confidence (the softmax probability of the top class) needs every class at every pixel; it is computed
band by band of image rows (:func:`official_confidence`), at about the literal path's cost but in
bounded memory.

Memory: every intermediate holds at most about ``budget`` float32 values (row bands, chunks of
candidates), besides the output arrays; with the default budget the extra memory at 4000x3000 with 150
classes stays far below 64 MB (``test/test_official_labels.py`` measures it).

NaN logits are outside the contract (the literal argmax returns a NaN's index; this module does not).
Everything is plain torch, so it runs where the logits are (CPU or CUDA).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from .bilinear_kernel import (ROUNDED_SEPARATELY, GatheredTaps, KernelArithmetic, Taps, channel_vectorised,
                              kernel_arithmetic, resize_samples, resized_channels_last, tail_classes, taps)

#: Default bound on the number of float32 values in any one intermediate tensor (8 MiB).
DEFAULT_BUDGET = 1 << 21
#: Longest run of image rows (columns) evaluated together as one tile; longer cells are split.
MAX_TILE = 16
#: Logit of the padding candidates of a bucket: far below any real logit (never a maximum) and finite
#: (zero weights times it stay zero).
PAD_LOGIT = torch.finfo(torch.float32).min / 64
#: An index beyond any image (tile padding), small enough that FAR * width + FAR fits in int64.
FAR = 1 << 40
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
    tile ``cell_first_tile[c]`` on; tile ``t`` holds the image indices ``members[t]`` (-1 = padding).
    ``composed[t]`` gives each member's value as one weighted sum of the window (to within a few float32
    roundings of the kernel's). Exactly as the kernel: the tile's network indices ``network[t]`` come from
    the window with the taps ``first`` (indices into the window, ``[G, M]``), and its members from those
    with ``second`` (indices into ``network[t]``, ``[G, L]``; None when the second resize is skipped,
    then ``network`` = members).
    """

    window: int
    cell_start: torch.Tensor  # [U] int64, increasing
    cell_of: torch.Tensor  # [n_image] int64
    cell_first_tile: torch.Tensor  # [U] int64
    cell_tiles: torch.Tensor  # [U] int64
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
    """Cells and tiles of one axis (built on the host: small arrays). Tiles are at most
    ``ceil(n_image / n_logit)`` long (so the long cells at the clamped edges do not set the tile size)
    and at most ``max_tile``."""
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
    length = max(1, min(-(-n_image // n_logit), max_tile))
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
                    on_device(np.bincount(tile_cell, minlength=cells)), on_device(members),
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
    slack = SLACK * _largest_magnitude(values)
    labeller = _Labeller(values, rows, cols, arithmetic, vectorised, tail_classes(classes, arithmetic).to(device),
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


#: Classes whose window extremes are computed together (small buffers, reused by the allocator).
_BOUNDS_CLASSES = 16


def cell_bounds(values: torch.Tensor, window_rows: int, window_cols: int, row_starts: torch.Tensor,
                col_starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For contiguous ``values`` ``[K, r, c]`` and the cells whose windows start at ``row_starts`` x
    ``col_starts``: each class's window maximum ``[K, Ur, Uc]``, the largest window minimum of any class
    ``[Ur, Uc]`` and a class that has it ``[Ur, Uc]`` (int64). A few classes at a time, so that only the
    maxima take memory of the logits' size."""
    classes = values.shape[0]
    upper = values.new_empty((classes, row_starts.numel(), col_starts.numel()))
    best_lower = reference = None
    for first in range(0, classes, _BOUNDS_CLASSES):
        part = values[first:first + _BOUNDS_CLASSES]
        part_upper, part_lower = window_extremes(part, window_rows, window_cols)
        upper[first:first + part.shape[0]] = _take(_take(part_upper, 1, row_starts), 2, col_starts)
        part_lower = _take(_take(part_lower, 1, row_starts), 2, col_starts)
        part_best = part_lower.amax(0)
        part_reference = _a_maximiser(part_lower, part_best) + first
        if best_lower is None:
            best_lower, reference = part_best, part_reference
        else:
            higher = part_best > best_lower
            reference = torch.where(higher, part_reference, reference)
            best_lower = torch.maximum(best_lower, part_best)
    return upper, best_lower, reference


def window_extremes(values: torch.Tensor, window_rows: int, window_cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximum and minimum of contiguous ``values`` ``[K, r, c]`` over every ``window_rows x
    window_cols`` window: ``[K, r - window_rows + 1, c - window_cols + 1]`` each.

    Running extremes over the flat memory, shifted by one element (columns) and then by one row: every
    operation reads contiguous memory, and each pass fills one new buffer in place (fresh large buffers
    cost more than the arithmetic). Windows that would wrap into the next row are computed too and left
    out of the returned views."""
    classes, rows, cols = values.shape
    upper = lower = values.view(-1)
    for step, count in ((1, window_cols), (cols, window_rows)):
        if count == 1:
            continue
        size = upper.numel() - (count - 1) * step
        upper_run = torch.maximum(upper[:size], upper[step:step + size])
        lower_run = torch.minimum(lower[:size], lower[step:step + size])
        for shift in range(2 * step, count * step, step):
            torch.maximum(upper_run, upper[shift:shift + size], out=upper_run)
            torch.minimum(lower_run, lower[shift:shift + size], out=lower_run)
        upper, lower = upper_run, lower_run
    shape = (classes, rows - window_rows + 1, cols - window_cols + 1)
    strides = (rows * cols, cols, 1)
    return upper.as_strided(shape, strides), lower.as_strided(shape, strides)


def consecutive_chunks(sizes: torch.Tensor, limit: int) -> list[tuple[int, int]]:
    """Ranges ``[begin, end)`` covering ``sizes`` in order, each summing to at most ``limit`` (an item
    larger than ``limit`` makes a range of its own)."""
    ends = sizes.cumsum(0)
    ranges: list[tuple[int, int]] = []
    begin, done = 0, 0
    while begin < sizes.numel():
        end = max(int(torch.searchsorted(ends, done + limit, right=True)), begin + 1)
        ranges.append((begin, end))
        begin, done = end, int(ends[end - 1])
    return ranges


def _largest_magnitude(values: torch.Tensor) -> float:
    """max |values| (0 for none), without a temporary of their size."""
    if values.numel() == 0:
        return 0.0
    lowest, highest = torch.aminmax(values)
    return max(float(highest), -float(lowest))


def _a_maximiser(values: torch.Tensor, maximum: torch.Tensor) -> torch.Tensor:
    """For each position of ``values`` ``[K, ...]``, one index ``k`` where ``values[k]`` equals
    ``maximum`` (the largest such; the narrowest integer type that holds K is the fastest)."""
    classes = values.shape[0]
    dtype = torch.uint8 if classes <= 256 else torch.int16 if classes <= 1 << 15 else torch.int32
    index = torch.arange(classes, device=values.device).to(dtype).view(-1, *([1] * (values.dim() - 1)))
    return ((values == maximum).to(dtype) * index).amax(0).long()


def _capacity(count: torch.Tensor) -> torch.Tensor:
    """Bucket sizes: ``count`` rounded up to a power of two."""
    return torch.exp2(torch.ceil(torch.log2(count.float()))).long()


def _take(values: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """``values.index_select(dim, index)``; a slice (no copy) when ``index`` counts up by one."""
    begin = int(index[0])
    if int(index[-1]) - begin == index.numel() - 1:
        return values.narrow(dim, begin, index.numel())
    return values.index_select(dim, index)


def _taps_of(taps_: GatheredTaps, tile: torch.Tensor) -> GatheredTaps:
    """Per-item taps: the rows of ``taps_`` for each item's tile."""
    return GatheredTaps(*(part.index_select(0, tile) for part in (taps_.index0, taps_.index1, taps_.weight0,
                                                                   taps_.weight1)))


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

    def band(self, first_cell: int, end_cell: int) -> None:
        """Label the image rows of row cells ``first_cell .. end_cell - 1``."""
        rows, cols = self.rows, self.cols
        logit_row = int(rows.cell_start[first_cell])
        part = self.values[:, logit_row:int(rows.cell_start[end_cell - 1]) + rows.window].contiguous()
        upper, best_lower, reference = cell_bounds(part, rows.window, cols.window,
                                                   rows.cell_start[first_cell:end_cell] - logit_row, cols.cell_start)
        reference = reference.flatten()
        self._fill(first_cell, end_cell, reference)
        candidate = (upper >= best_lower - self.slack).flatten(1)  # [K, cells]
        del upper
        count = candidate.view(torch.uint8).sum(0, dtype=torch.int32)
        cls, cell = torch.nonzero(candidate & (count > 1), as_tuple=True)
        if cell.numel() == 0:
            return
        order = torch.argsort(cell, stable=True)  # by cell, then class
        cell, cls = self._undominated(cell[order], cls[order], first_cell, reference)
        if cell.numel() == 0:
            return
        # chunks of whole cells (a cell's candidates are consecutive), each within the budget
        per_cell = torch.unique_consecutive(cell, return_counts=True)[1]
        firsts = torch.cumsum(per_cell, 0) - per_cell
        first_cells = cell.index_select(0, firsts)
        tiles = (rows.cell_tiles.index_select(0, first_cells // cols.cells + first_cell)
                 * cols.cell_tiles.index_select(0, first_cells % cols.cells))
        cost = _capacity(per_cell) * tiles * self._approximate_size()
        for begin, end in consecutive_chunks(cost, self.budget):
            chunk = slice(int(firsts[begin]), int(firsts[end - 1] + per_cell[end - 1]))
            self._evaluate(cell[chunk], cls[chunk], first_cell)

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

    def _undominated(self, cell: torch.Tensor, cls: torch.Tensor, first_cell: int, reference: torch.Tensor,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The candidates (``cell`` in the band's numbering, non-decreasing; classes increasing within a
        cell) that are not below their cell's reference class (by more than the slack) at every logit of
        the window, in the cells where more than one is left (a single one left is the reference, as
        filled)."""
        cols = self.cols
        row_cell, col_cell = cell // cols.cells + first_cell, cell % cols.cells
        keep = torch.empty_like(cell, dtype=torch.bool)
        per_chunk = max(1, self.budget // (2 * self.rows.window * cols.window))
        for begin in range(0, cell.numel(), per_chunk):
            part = slice(begin, begin + per_chunk)
            own = self._windows(cls[part], row_cell[part], col_cell[part])
            best = self._windows(reference.index_select(0, cell[part]), row_cell[part], col_cell[part])
            keep[part] = (own - best).amax((1, 2)) >= -self.slack
        cell_rank, count = torch.unique_consecutive(cell, return_inverse=True, return_counts=True)[1:]
        count = torch.zeros_like(count).index_add_(0, cell_rank, keep.to(count.dtype))
        kept = torch.nonzero(keep & (count > 1).index_select(0, cell_rank))[:, 0]
        return cell.index_select(0, kept), cls.index_select(0, kept)

    def _evaluate(self, cell: torch.Tensor, cls: torch.Tensor, first_cell: int) -> None:
        """Label the pixels of the candidates' cells (``cell`` in the band's numbering, non-decreasing;
        classes increasing within a cell; at least two per cell), in buckets of cells with up to 2, 4,
        8, ... candidates."""
        cols = self.cols
        cell_rank, count = torch.unique_consecutive(cell, return_inverse=True, return_counts=True)[1:]
        first_pair = torch.cumsum(count, 0) - count
        first_cells = cell.index_select(0, first_pair)
        row_cell, col_cell = first_cells // cols.cells + first_cell, first_cells % cols.cells  # per cell
        windows = self._windows(cls, row_cell.index_select(0, cell_rank), col_cell.index_select(0, cell_rank))
        slot = torch.arange(cell.numel(), device=cell.device) - first_pair.index_select(0, cell_rank)
        capacity = _capacity(count)
        for size in torch.unique(capacity).tolist():
            in_bucket = capacity == size  # [cells]
            chosen = torch.nonzero(in_bucket.index_select(0, cell_rank))[:, 0]
            rank = (torch.cumsum(in_bucket, 0) - 1).index_select(0, cell_rank.index_select(0, chosen))
            place = rank * size + slot.index_select(0, chosen)  # the pair's cell's rank in the bucket, its slot
            cells = torch.nonzero(in_bucket)[:, 0]
            dense = windows.new_full((cells.numel() * size, *windows.shape[1:]), PAD_LOGIT)
            dense.index_copy_(0, place, windows.index_select(0, chosen))
            classes = cls.new_full((cells.numel() * size,), self.values.shape[0])
            classes.index_copy_(0, place, cls.index_select(0, chosen))
            self._label_tiles(dense.view(-1, size, *windows.shape[1:]), classes.view(-1, size),
                              row_cell.index_select(0, cells), col_cell.index_select(0, cells))

    def _label_tiles(self, windows: torch.Tensor, classes: torch.Tensor, row_cell: torch.Tensor,
                     col_cell: torch.Tensor) -> None:
        """Label every tile of the cells (``row_cell[i]``, ``col_cell[i]``) from their candidates
        ``classes[i]`` (increasing, then padding) and window logits ``windows[i]`` ``[C, Sr, Sc]``: all
        candidates with the composed weights; where a tile's top two come within the slack (rounding
        could order them either way, ties included), again exactly as the kernel computes them. The
        label is the argmax, the lowest class among equal maxima like ``torch.argmax``."""
        rows, cols = self.rows, self.cols
        row_tile, col_tile, of_cell = self._tiles(row_cell, col_cell)
        if of_cell is not None:
            windows, classes = windows.index_select(0, of_cell), classes.index_select(0, of_cell)
        tiles, count = classes.shape
        values = _weighted(windows, rows.composed.index_select(0, row_tile), cols.composed.index_select(0, col_tile))
        top, second, position = _top_two(values)  # [Lr, Lc, T] each; exact ties are doubtful below
        doubtful = torch.nonzero((top - second).flatten(0, 1).amin(0) <= self.slack)[:, 0]
        chunks = consecutive_chunks(torch.full_like(doubtful, count * self._exact_size()), self.budget) \
            if doubtful.numel() else []
        for begin, end in chunks:
            redo = doubtful[begin:end]
            exact = self._resized(windows[redo].flatten(0, 1), classes[redo].flatten(),
                                  row_tile[redo].repeat_interleave(count), col_tile[redo].repeat_interleave(count))
            # argmax: the first maximum, as torch.argmax on the official tensor
            first = exact.view(redo.numel(), count, -1).argmax(1).to(position.dtype)  # [redo, Lr * Lc]
            position[:, :, redo] = first.t().view(rows.tile_length, cols.tile_length, -1)
        slots = position.long() * tiles + torch.arange(tiles, device=position.device)
        label = classes.t().reshape(-1).index_select(0, slots.view(-1)).to(self.labels.dtype)
        self.labels.scatter_(0, self._targets(row_tile, col_tile).reshape(-1), label)

    def _tiles(self, row_cell: torch.Tensor, col_cell: torch.Tensor,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The tiles of the cells (``row_cell[i]``, ``col_cell[i]``): their row and column tile numbers
        and the cell each came from (None when every cell is one tile)."""
        rows, cols = self.rows, self.cols
        row_tiles, col_tiles = rows.cell_tiles.index_select(0, row_cell), cols.cell_tiles.index_select(0, col_cell)
        row_first = rows.cell_first_tile.index_select(0, row_cell)
        col_first = cols.cell_first_tile.index_select(0, col_cell)
        if bool((row_tiles == 1).all()) and bool((col_tiles == 1).all()):
            return row_first, col_first, None
        per_cell = row_tiles * col_tiles
        of_cell = torch.repeat_interleave(torch.arange(row_cell.numel(), device=row_cell.device), per_cell)
        within = torch.arange(of_cell.numel(), device=of_cell.device) - torch.repeat_interleave(
            torch.cumsum(per_cell, 0) - per_cell, per_cell)
        return (row_first[of_cell] + within // col_tiles[of_cell],
                col_first[of_cell] + within % col_tiles[of_cell], of_cell)

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
        """Flat index into ``labels`` ``[Lr, Lc, T]`` of each tile pixel (padding: the spare element)."""
        image_rows = self.rows.members_or_far.index_select(0, row_tile).t()[:, None, :]
        image_cols = self.cols.members_or_far.index_select(0, col_tile).t()[None, :, :]
        return (image_rows * self.image_width + image_cols).clamp_(max=self.labels.numel() - 1)


def _weighted(windows: torch.Tensor, row_weights: torch.Tensor, col_weights: torch.Tensor) -> torch.Tensor:
    """``values[c, y, x, t] = sum over r, s of row_weights[t, y, r] * windows[t, c, r, s] *
    col_weights[t, x, s]``: ``[C, Lr, Lc, T]`` from windows ``[T, C, Sr, Sc]`` and weights ``[T, Lr, Sr]``,
    ``[T, Lc, Sc]``. Along rows, then along columns, as broadcast multiply-adds with the tiles innermost:
    long contiguous runs (tiles are many, everything else is short)."""
    windows = windows.permute(1, 2, 3, 0).contiguous()  # [C, Sr, Sc, T]
    row_weights = row_weights.permute(1, 2, 0).contiguous()  # [Lr, Sr, T]
    col_weights = col_weights.permute(1, 2, 0).contiguous()  # [Lc, Sc, T]
    down = None  # [C, Lr, Sc, T]
    for r in range(windows.shape[1]):
        term = (row_weights[None, :, r, None, :], windows[:, None, r, :, :])
        down = term[0] * term[1] if down is None else torch.addcmul(down, *term)
    values = None  # [C, Lr, Lc, T]
    for s in range(windows.shape[2]):
        term = (col_weights[None, None, :, s, :], down[:, :, None, s, :])
        values = term[0] * term[1] if values is None else torch.addcmul(values, *term)
    return values


def _top_two(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The largest and second largest of ``values`` ``[C, ...]`` over C (a power of two), and the position
    of a largest (uint8, or int32 beyond 256 candidates): a tournament of elementwise operations on
    contiguous halves, which is faster than a reduction over a short dimension."""
    half = values.shape[0] // 2
    dtype = torch.uint8 if values.shape[0] <= 256 else torch.int32
    if half == 0:
        return values[0], torch.full_like(values[0], -torch.inf), torch.zeros_like(values[0], dtype=dtype)
    low, high = values[:half], values[half:]
    top, second = torch.maximum(low, high), torch.minimum(low, high)
    slots = torch.arange(half, dtype=dtype, device=values.device).view(half, *([1] * (values.dim() - 1)))
    position = (high > low).to(dtype) * half + slots
    while half > 1:
        half //= 2
        low_top, high_top = top[:half], top[half:]
        second = torch.maximum(torch.minimum(low_top, high_top), torch.maximum(second[:half], second[half:]))
        position = torch.where(high_top > low_top, position[half:], position[:half])
        top = torch.maximum(low_top, high_top)
    return top[0], second[0], position[0]


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
