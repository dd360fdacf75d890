"""The official segmentation labels without the full-resolution K-channel tensor.

The official tail (``shared/design/edaformer.md`` section 6) resizes the stride-8 logits ``[K, h, w]``
bilinearly (align_corners=False) to the network input size, then to the image size, then takes the
argmax over the K classes. Done literally that is K values per image pixel: 7.2 GB for 150 classes at
4000x3000, and twice the network's time at 640x480 on a CPU. This module gives the same labels from
the small logits.

Why it can:

- Both resizes are separable and linear, so their composition is too: image row ``y`` is a fixed
  weighted sum of a few consecutive logit rows (:class:`AxisPlan`), the same for every class, and
  likewise for columns. The weights are non-negative and sum to one, so a class's value at a pixel lies
  between the minimum and the maximum of its logits in the pixel's *window* (its rows x its columns).
- Pixels are tiled so that every pixel of a tile has the same window (consecutive image rows whose
  support starts at the same logit row, times the same for columns). Within a tile, class ``k`` cannot
  be the argmax anywhere if its window maximum is below the largest window minimum of any class (the
  tile's *reference* class is one that has it), or if it is below the reference class at every cell of
  the window (then it is below it at every pixel, since the weights are non-negative). In real logit
  maps most tiles keep one class, which is then the label of the whole tile; the others keep a few.
- The remaining candidates are interpolated exactly at the tile's pixels (the composed weights, in
  float32), and the argmax among them, first class on ties like ``torch.argmax``, is the label.

Agreement with the literal computation: the weights are read from PyTorch's own bilinear kernel on the
same device (:func:`stage_weights`), so they are the official ones; what differs is float32 rounding
of the sums -- both paths are within a few ulps of max|logit| of the exact value -- so labels can
differ only where the official top two values are that close (the spec allows a gap below
1e-6 x max|logit|). A pruned class can exceed the winner only by such rounding too.

Confidence (the softmax probability of the top class) needs every class that carries mass, so with
``with_confidence`` the pruning keeps every class that can come within :func:`softmax_margin` of the
top value (what it drops weighs < 1e-7 of the top class's probability), and the softmax runs over the
kept candidates. On logits with little spread (e.g. untrained weights) that is all K classes; memory
stays bounded (it is evaluated tile by tile) but the time approaches the literal path's.

Memory: every intermediate holds at most about ``budget`` float32 values (row bands of tiles, tile
chunks), besides the output arrays; with the default budget the extra memory at 4000x3000 with 150
classes stays far below 64 MB (``test/test_official_labels.py`` measures it).

Everything is plain torch, so it runs where the logits are (CPU or CUDA).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

#: Default bound on the number of float32 values in any one intermediate tensor (4 MiB).
DEFAULT_BUDGET = 1 << 20
#: Longest run of image rows (columns) that share one tile; longer runs are split.
MAX_GROUP = 64
#: Logit of the padding candidates in a bucket: far below any real logit (never a maximum, exp() of
#: the difference is 0) and finite (zero weights times it stay zero).
PAD_LOGIT = torch.finfo(torch.float32).min / 64
#: Confidence: drop a class only when the mass it can carry is below this fraction of the top class's.
CONFIDENCE_NEGLIGIBLE = 1e-7


def softmax_margin(num_classes: int) -> float:
    """How far below the top value a class may stay out of the softmax sum: ``num_classes`` classes
    each at least this far below carry together < :data:`CONFIDENCE_NEGLIGIBLE` of the top's mass."""
    return math.log(num_classes) - math.log(CONFIDENCE_NEGLIGIBLE)


def label_tensor_dtype(num_classes: int) -> torch.dtype:
    """uint8 up to 256 classes, int32 above (the caller narrows to uint16 on the host)."""
    return torch.uint8 if num_classes <= 256 else torch.int32


def stage_weights(n_in: int, n_out: int, device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """The source indices ``[n_out, 4]`` (int64) and weights ``[n_out, 4]`` (float64, zero where
    unused) that ``F.interpolate(mode="bilinear", align_corners=False)`` uses along one axis from
    ``n_in`` to ``n_out`` samples on ``device``.

    Read from the kernel itself, so its float32 arithmetic (source-coordinate rounding, the clamp at 0,
    the last-sample edge rule) is reproduced bit for bit: four probe channels, channel ``r`` one at the
    inputs ``j`` with ``j % 4 == r``, are resized; an output reads at most the two inputs ``i0, i0 + 1``
    where ``i0`` is within one of the float64 estimate ``f``, so the four inputs ``f - 1 .. f + 2`` have
    distinct residues and each probe output is exactly the weight of one of them.
    """
    inputs = np.arange(n_in)
    probe = np.zeros((1, 4, n_in, 1), dtype=np.float32)
    probe[0, inputs % 4, inputs, 0] = 1.0
    probe_out = F.interpolate(torch.from_numpy(probe).to(device), size=(n_out, 1), mode="bilinear",
                              align_corners=False)
    read = probe_out[0, :, :, 0].cpu().double().numpy()  # [4, n_out]
    outputs = np.arange(n_out)
    source = np.maximum((outputs + 0.5) * (n_in / n_out) - 0.5, 0.0)
    estimate = np.minimum(np.floor(source).astype(np.int64), n_in - 1)
    index = estimate[:, None] + np.arange(-1, 3)  # [n_out, 4]
    weight = np.where((index >= 0) & (index < n_in), read[index % 4, outputs[:, None]], 0.0)
    return np.clip(index, 0, n_in - 1), weight


@dataclass(frozen=True)
class AxisPlan:
    """One image axis of the official two resizes, composed, in cells and tiles.

    Image index ``i`` reads the logit indices ``cell_start[c] .. cell_start[c] + window - 1`` of its
    cell ``c = cell_of[i]`` (the image indices with the same window start) with composed weights. Each
    cell is cut into ``cell_tiles[c]`` tiles of consecutive indices, from tile ``cell_first_tile[c]``
    on; tile ``t`` holds the image indices ``members[t]`` (-1 = padding) with the float32 weights
    ``weights[t]`` ``[L, window]`` (zero where an index reads nothing, and for padding). Tensors are on
    the logits' device.
    """

    window: int
    cell_start: torch.Tensor  # [U] int64, increasing
    cell_of: torch.Tensor  # [n_image] int64
    cell_first_tile: torch.Tensor  # [U] int64
    cell_tiles: torch.Tensor  # [U] int64
    members: torch.Tensor  # [G, L] int64
    weights: torch.Tensor  # [G, L, window] float32

    @property
    def cells(self) -> int:
        return int(self.cell_start.shape[0])

    @property
    def tiles(self) -> int:
        return int(self.members.shape[0])

    @property
    def tile_length(self) -> int:
        return int(self.members.shape[1])


def axis_plan(n_logit: int, n_network: int, n_image: int, device: torch.device | str = "cpu") -> AxisPlan:
    """The composed weights of one axis: ``n_logit`` logit samples resized to ``n_network`` and then to
    ``n_image`` (the second resize is the identity when the two are equal, as the official path
    skips it). Tiles are at most ``ceil(n_image / n_logit)`` long (so the long cells at the clamped
    edges do not set the tile size) and at most :data:`MAX_GROUP`. Built on the host (small arrays)."""
    index, weight = stage_weights(n_logit, n_network, device)
    if n_image != n_network:
        index2, weight2 = stage_weights(n_network, n_image, device)
        index = index[index2].reshape(n_image, -1)  # logit indices through each network index
        weight = (weight2[:, :, None] * weight[index2]).reshape(n_image, -1)
    used = weight != 0
    first = np.where(used, index, n_logit).min(1)
    last = np.where(used, index, -1).max(1)
    window = int((last - first).max()) + 1
    start = np.minimum(first, n_logit - window)
    offset = np.where(used, index - start[:, None], 0)
    composed = (weight[:, :, None] * (offset[:, :, None] == np.arange(window))).sum(1)  # [n_image, window]
    new_cell = np.r_[True, start[1:] != start[:-1]]
    cell_of = np.cumsum(new_cell) - 1
    positions = np.arange(n_image)
    cell_first = np.maximum.accumulate(np.where(new_cell, positions, 0))
    length = min(-(-n_image // n_logit), MAX_GROUP)
    tile_of = np.cumsum(new_cell | ((positions - cell_first) % length == 0)) - 1
    tiles = int(tile_of[-1]) + 1
    tile_first = np.searchsorted(tile_of, np.arange(tiles))
    tile_cell = cell_of[tile_first]
    position = positions - tile_first[tile_of]
    members = np.full((tiles, int(position.max()) + 1), -1, dtype=np.int64)
    members[tile_of, position] = positions
    weights = np.zeros((*members.shape, window), dtype=np.float32)
    weights[tile_of, position] = composed
    cells = int(cell_of[-1]) + 1

    def on_device(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(device)

    return AxisPlan(window, on_device(start[new_cell]), on_device(cell_of),
                    on_device(np.searchsorted(tile_cell, np.arange(cells))),
                    on_device(np.bincount(tile_cell, minlength=cells)), on_device(members), on_device(weights))


def official_labels(logits: torch.Tensor, network_size: tuple[int, int], image_size: tuple[int, int],
                    with_confidence: bool = False, budget: int = DEFAULT_BUDGET,
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Labels ``[H, W]`` (uint8 up to 256 classes, else int32) equal to ``argmax`` over classes of the
    official two bilinear resizes of ``logits`` ``[1, K, h, w]`` (to ``network_size``, then to
    ``image_size``), and with ``with_confidence`` the top class's softmax probability ``[H, W]``
    (float32); on the logits' device. ``budget`` bounds the values of any one intermediate tensor."""
    values = logits.detach()[0].float().contiguous()
    classes, height, width = values.shape
    device = values.device
    rows = axis_plan(height, network_size[0], image_size[0], device)
    cols = axis_plan(width, network_size[1], image_size[1], device)
    pixels = image_size[0] * image_size[1]
    # one spare element at the end: the padding pixels of tiles are written there
    labels = torch.empty(pixels + 1, dtype=label_tensor_dtype(classes), device=device)
    confidence = torch.empty(pixels + 1, device=device) if with_confidence else None
    margin = softmax_margin(classes) if with_confidence else 0.0
    labeller = _Labeller(values, rows, cols, image_size[1], margin, budget, labels, confidence)
    rows_per_cell = -(-image_size[0] // rows.cells)
    per_band = max(1, min(budget // (classes * width) - rows.window,
                          budget // (rows_per_cell * image_size[1])))
    for first_cell in range(0, rows.cells, per_band):
        labeller.band(first_cell, min(first_cell + per_band, rows.cells))
    image = labels[:pixels].view(image_size)
    return image, None if confidence is None else confidence[:pixels].view(image_size)


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


def _take(values: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """``values.index_select(dim, index)``; a slice (no copy) when ``index`` counts up by one."""
    begin = int(index[0])
    if int(index[-1]) - begin == index.numel() - 1:
        return values.narrow(dim, begin, index.numel())
    return values.index_select(dim, index)


@dataclass
class _Labeller:
    """Labels one band of row cells at a time into ``labels`` (and ``confidence``), flat image buffers
    with one spare element. A band's 2-D cells are numbered row-major (row cells x column cells)."""

    values: torch.Tensor  # [K, h, w] float32, contiguous
    rows: AxisPlan
    cols: AxisPlan
    image_width: int
    margin: float  # keep classes within this of the best lower bound (0 for labels only)
    budget: int
    labels: torch.Tensor
    confidence: torch.Tensor | None

    def band(self, first_cell: int, end_cell: int) -> None:
        """Label the image rows of row cells ``first_cell .. end_cell - 1``."""
        rows, cols = self.rows, self.cols
        logit_row = int(rows.cell_start[first_cell])
        part = self.values[:, logit_row:int(rows.cell_start[end_cell - 1]) + rows.window].contiguous()
        upper, lower = window_extremes(part, rows.window, cols.window)
        row_starts = rows.cell_start[first_cell:end_cell] - logit_row
        upper = _take(_take(upper, 1, row_starts), 2, cols.cell_start)  # [K, row cells, column cells]
        lower = _take(_take(lower, 1, row_starts), 2, cols.cell_start)
        best_lower, reference = lower.max(0)  # a class at least this high at every pixel of the cell
        del lower
        reference = reference.flatten()
        self._fill(first_cell, end_cell, reference)
        candidate = (upper >= best_lower - self.margin).flatten(1)  # [K, cells]
        counts = candidate.sum(0)
        several = torch.where(counts > 1, counts, 0)  # a single candidate is the reference
        for begin, end in consecutive_chunks(several * (rows.window * cols.window), self.budget):
            if int(several[begin:end].max()) == 0:
                continue
            cls, cell = torch.nonzero(candidate[:, begin:end], as_tuple=True)
            cell = cell + begin
            kept = several[cell] > 0
            cell, cls = cell[kept], cls[kept]
            order = torch.argsort(cell, stable=True)  # by cell, then class
            cell, cls = cell[order], cls[order]
            self._refine(cell, cls, reference[cell], first_cell, counts.numel())

    def _fill(self, first_cell: int, end_cell: int, reference: torch.Tensor) -> None:
        """Every pixel of the band gets its cell's reference class (and confidence 1)."""
        rows, cols = self.rows, self.cols
        image_rows = torch.nonzero((rows.cell_of >= first_cell) & (rows.cell_of < end_cell))[:, 0]
        reference = reference.to(self.labels.dtype).view(-1, cols.cells)
        band = reference[rows.cell_of[image_rows] - first_cell][:, cols.cell_of]
        begin, end = int(image_rows[0]) * self.image_width, (int(image_rows[-1]) + 1) * self.image_width
        self.labels[begin:end] = band.flatten()
        if self.confidence is not None:
            self.confidence[begin:end] = 1.0

    def _refine(self, cell: torch.Tensor, cls: torch.Tensor, reference: torch.Tensor, first_cell: int,
                cells: int) -> None:
        """Drop each candidate (cell, class) whose logits are below the cell's reference class's (by
        more than the margin) at every point of the window; interpolate the cells left with more than
        one candidate, in buckets of up to 2, 4, 8, ... candidates. ``cell`` (band numbering, of
        ``cells``) is non-decreasing and the classes increase within a cell."""
        cols = self.cols
        row_cell, col_cell = cell // cols.cells + first_cell, cell % cols.cells
        windows = self._windows(torch.stack([cls, reference], 1), row_cell, col_cell)  # [P, 2, Sr, Sc]
        above = (windows[:, 0] - windows[:, 1]).amax((1, 2)) >= -self.margin
        counts = torch.bincount(cell[above], minlength=cells)
        kept = above & (counts[cell] > 1)
        if not bool(kept.any()):
            return
        cell, cls, windows = cell[kept], cls[kept], windows[kept, 0]
        slot = torch.arange(cell.numel(), device=cell.device) - torch.searchsorted(cell, cell)
        capacity = torch.exp2(torch.ceil(torch.log2(counts[cell].float()))).long()
        for size in torch.unique(capacity).tolist():
            chosen = capacity == size
            bucket_cells, rank = torch.unique_consecutive(cell[chosen], return_inverse=True)
            dense_windows = windows.new_full((bucket_cells.numel(), size, *windows.shape[1:]), PAD_LOGIT)
            dense_windows[rank, slot[chosen]] = windows[chosen]
            dense_classes = cls.new_zeros(bucket_cells.numel(), size)
            dense_classes[rank, slot[chosen]] = cls[chosen]
            row_tile, col_tile, of_cell = self._tiles(bucket_cells // cols.cells + first_cell,
                                                      bucket_cells % cols.cells)
            if of_cell is not None:
                dense_windows, dense_classes = dense_windows[of_cell], dense_classes[of_cell]
            self._interpolate(dense_classes, dense_windows, row_tile, col_tile)

    def _windows(self, cls: torch.Tensor, row_cell: torch.Tensor, col_cell: torch.Tensor) -> torch.Tensor:
        """Logits ``[P, C, Sr, Sc]`` of the classes ``cls[i]`` ``[P, C]`` over the window of cell
        (``row_cell[i]``, ``col_cell[i]``)."""
        rows, cols, values = self.rows, self.cols, self.values
        _, height, width = values.shape
        corner = rows.cell_start[row_cell] * width + cols.cell_start[col_cell]  # [P]
        offsets = (torch.arange(rows.window, device=values.device)[:, None] * width
                   + torch.arange(cols.window, device=values.device))  # [Sr, Sc]
        return values.view(-1)[(cls * (height * width) + corner[:, None])[:, :, None, None] + offsets]

    def _tiles(self, row_cell: torch.Tensor, col_cell: torch.Tensor,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The tiles of the cells (``row_cell[i]``, ``col_cell[i]``): their row and column tile numbers
        and the cell each came from (None when every cell is one tile)."""
        rows, cols = self.rows, self.cols
        row_tiles, col_tiles = rows.cell_tiles[row_cell], cols.cell_tiles[col_cell]
        row_first, col_first = rows.cell_first_tile[row_cell], cols.cell_first_tile[col_cell]
        if bool((row_tiles == 1).all()) and bool((col_tiles == 1).all()):
            return row_first, col_first, None
        per_cell = row_tiles * col_tiles
        of_cell = torch.repeat_interleave(torch.arange(row_cell.numel(), device=row_cell.device), per_cell)
        within = torch.arange(of_cell.numel(), device=of_cell.device) - torch.repeat_interleave(
            per_cell.cumsum(0) - per_cell, per_cell)
        return (row_first[of_cell] + within // col_tiles[of_cell],
                col_first[of_cell] + within % col_tiles[of_cell], of_cell)

    def _interpolate(self, cls: torch.Tensor, windows: torch.Tensor, row_tile: torch.Tensor,
                     col_tile: torch.Tensor) -> None:
        """Exact values of the classes ``cls`` ``[T, C]`` (increasing along C, then padding) at the
        pixels of their tiles from their windows ``[T, C, Sr, Sc]``; writes the argmax (the lowest class
        among equal maxima, like ``torch.argmax``) and the top class's softmax probability."""
        rows, cols = self.rows, self.cols
        tiles, count, window_rows, window_cols = windows.shape
        tile_rows, tile_cols = rows.tile_length, cols.tile_length
        tile_size = max(tile_rows, window_rows) * max(tile_cols, window_cols)
        per_chunk = max(1, self.budget // (count * tile_size))
        for begin in range(0, tiles, per_chunk):
            chunk = slice(begin, begin + per_chunk)
            row_weights = rows.weights[row_tile[chunk]]  # [T, Gh, Sr]
            col_weights = cols.weights[col_tile[chunk]]  # [T, Gw, Sc]
            many = row_weights.shape[0]
            # along rows for all classes of a tile at once, then along columns
            down = torch.bmm(row_weights, windows[chunk].transpose(1, 2).reshape(many, window_rows, -1))
            at_pixels = torch.bmm(down.view(many, -1, window_cols), col_weights.transpose(1, 2))
            at_pixels = at_pixels.view(many, tile_rows, count, tile_cols)
            top, position = at_pixels.max(2)  # [T, Gh, Gw]
            target = self._targets(row_tile[chunk], col_tile[chunk]).flatten()
            label = cls[chunk].gather(1, position.flatten(1))
            self.labels.scatter_(0, target, label.flatten().to(self.labels.dtype))
            if self.confidence is not None:
                mass = torch.exp(at_pixels - top[:, :, None]).sum(2)
                self.confidence.scatter_(0, target, mass.reciprocal().flatten())

    def _targets(self, row_tile: torch.Tensor, col_tile: torch.Tensor) -> torch.Tensor:
        """Flat image index ``[T, Gh, Gw]`` of each tile pixel; padding goes to the spare element."""
        image_rows = self.rows.members[row_tile][:, :, None]
        image_cols = self.cols.members[col_tile][:, None, :]
        spare = self.labels.shape[0] - 1
        return torch.where((image_rows >= 0) & (image_cols >= 0),
                           image_rows * self.image_width + image_cols, spare)
