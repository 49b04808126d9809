"""One resample through a chain of geometric kernels, from their maps of sampling points.

Resampling op by op (crop and resize, then rotate, shear, warp) interpolates the image up to four
times, padding and rounding to uint8 each time: 5-7 ms a 224 px photo per op, the loader's
largest cost once colour was fused. Here each geometric kernel is stated as a `PointMap`: where
each pixel of its output reads from in its input, in pixel coordinates (pixel centres at whole
numbers): a 3 x 3 affine matrix (flip, crop and scale, rotation, shear: torchvision's matrices
and conventions) or a displacement field (the local warp), then whether the kernel's reflect
padding mirrors the points back into its input. `resample` chains the maps backwards from the
output's pixels to the source, multiplying consecutive matrices into one and moving the points
only where a field or a reflection needs them, and reads the source once, bilinear. It reads
from the very points the op-by-op kernels would; only the interpolation differs (once instead of
up to four times). Hand-written: torchvision's kernels sample one transform at a time.

Points are kept as two float32 planes, (2, H, W): arithmetic on an interleaved (H, W, 2) layout
is several times slower on the CPU.
"""

import functools
from typing import NamedTuple

import torch
from graft.augment.functional._tv import F


class PointMap(NamedTuple):
    """Where the pixels of a kernel's output read from in its input: an affine `matrix` (the six
    numbers a, b, c, d, e, f of x' = a x + b y + c, y' = d x + e y + f) or a `field` ((2, H, W)
    pixel offsets for the output's own pixels; it can only come first in a chain), then, with
    `reflect` = the input's (H, W), mirrored back into it."""

    matrix: tuple | None = None
    field: torch.Tensor | None = None
    reflect: tuple[int, int] | None = None


def affine_matrix(size, angle: float = 0.0, shear=(0.0, 0.0)) -> tuple:
    """Where the pixels of `affine(img, angle, shear)` (an image of `size`) read from: torchvision's
    inverse matrix, about the image centre."""
    from torchvision.transforms.v2.functional._geometry import _get_inverse_affine_matrix

    a, b, _, c, d, _ = _get_inverse_affine_matrix([0.0, 0.0], float(angle), [0.0, 0.0], 1.0,
                                                  [float(shear[0]), float(shear[1])])
    cx, cy = (size[1] - 1) / 2, (size[0] - 1) / 2
    return _matrix(a, b, cx - a * cx - b * cy, c, d, cy - c * cx - d * cy)


def flip_matrix(size, horizontal: bool, vertical: bool) -> tuple:
    """Where the pixels of `flip(img, horizontal, vertical)` read from."""
    sx, sy = (-1.0 if horizontal else 1.0), (-1.0 if vertical else 1.0)
    return _matrix(sx, 0.0, size[1] - 1.0 if horizontal else 0.0, 0.0, sy, size[0] - 1.0 if vertical else 0.0)


def box_matrix(size, top: int, left: int, height: int, width: int) -> tuple:
    """Where the pixels of `resized_crop(img, top, left, height, width, size)` read from: the box
    stretched over the output, pixel edges on pixel edges (torch's align_corners=False)."""
    sx, sy = width / size[1], height / size[0]
    return _matrix(sx, 0.0, left + sx / 2 - 0.5, 0.0, sy, top + sy / 2 - 0.5)


def resample(img: torch.Tensor, maps, size, block: int = 1) -> torch.Tensor:
    """`img` (C, H, W), uint8 or float 0..1, through a chain of PointMaps (the last kernel's
    first) into a (C, *size) image of img's dtype, read once, bilinear (uint8 rounded).

    block >= 2: the points lie about `block` source pixels apart (a large photo sampled down),
    where bilinear reads alone would alias; the source is first reduced by that factor with
    torchvision's antialiased resize, as a JPEG decoded at a DCT reduction would have been.
    """
    h, w = int(size[0]), int(size[1])
    identity = _matrix(1, 0, 0, 0, 1, 0)
    points, pending = None, identity  # the points so far (None: the output's pixels), and the
    bounds = (0.0, 0.0, w - 1.0, h - 1.0)  # matrix still to apply to them; their x0, y0, x1, y1
    for k, m in enumerate(maps):
        if m.field is not None:
            if k:
                raise ValueError("a displacement field can only come first in a chain of point maps")
            points = _pixels((h, w)) + m.field
            reach = m.field.abs().max().item()
            bounds = (-reach, -reach, w - 1 + reach, h - 1 + reach)
        else:
            pending = _then(pending, m.matrix)
        if m.reflect is not None:
            mapped = _bounds(pending, bounds)
            if not _inside(mapped, m.reflect):  # move the points, and mirror the strays back in
                points, pending = _move(pending, points, (h, w)), identity
                _reflect_(points, m.reflect, mapped)
                bounds = (0.0, 0.0, m.reflect[1] - 1.0, m.reflect[0] - 1.0)
    src_h, src_w = img.shape[-2:]
    if block >= 2:
        rh, rw = max(1, round(src_h / block)), max(1, round(src_w / block))
        img = F.resize(img, [rh, rw], antialias=True)
        pending = _then(pending, _matrix(rw / src_w, 0, rw / src_w / 2 - 0.5, 0, rh / src_h, rh / src_h / 2 - 0.5))
        src_h, src_w = rh, rw
    # Normalised coordinates of grid_sample (align_corners=False): -1 and 1 at the outer pixel edges.
    pending = _then(pending, _matrix(2 / src_w, 0, 1 / src_w - 1, 0, 2 / src_h, 1 / src_h - 1))
    grid = _move(pending, points, (h, w)).permute(1, 2, 0)
    src = img if img.is_floating_point() else img.to(torch.float32, memory_format=torch.contiguous_format)
    out = torch.nn.functional.grid_sample(src.unsqueeze(0), grid.unsqueeze(0).to(src.device, src.dtype),
                                          mode="bilinear", padding_mode="border", align_corners=False)[0]
    # Bilinear reads blend neighbouring pixels: never out of range, no clamp needed.
    return out if img.is_floating_point() else out.round_().to(torch.int16).to(torch.uint8)


def _matrix(a, b, c, d, e, f) -> tuple:
    return (float(a), float(b), float(c), float(d), float(e), float(f))


def _then(first: tuple, second: tuple) -> tuple:
    """The affine map `first`, then `second` (plain floats: these are far too small for tensors)."""
    a, b, c, d, e, f = second
    p, q, r, s, t, u = first
    return (a * p + b * s, a * q + b * t, a * r + b * u + c, d * p + e * s, d * q + e * t, d * r + e * u + f)


@functools.lru_cache(maxsize=8)
def _pixels(size) -> torch.Tensor:
    """(2, H, W): x, then y, of every pixel (read-only: shared between calls)."""
    ys, xs = torch.meshgrid(torch.arange(size[0], dtype=torch.float32), torch.arange(size[1], dtype=torch.float32),
                            indexing="ij")
    return torch.stack([xs, ys])


def _move(matrix: tuple, points: torch.Tensor | None, size) -> torch.Tensor:
    """`points` ((2, H, W), or None for the pixels of `size`) through an affine matrix: new planes."""
    points = _pixels(tuple(size)) if points is None else points
    a, b, c, d, e, f = matrix
    m = torch.tensor([[c, a, b], [f, d, e]], dtype=torch.float32)
    return torch.addmm(m[:, :1], m[:, 1:], points.view(2, -1)).view(points.shape)


def _bounds(matrix: tuple, bounds) -> tuple[float, float, float, float]:
    """Bounds (x0, y0, x1, y1) mapped through an affine matrix: its image's corners' bounds."""
    a, b, c, d, e, f = matrix
    corners = [(x, y) for x in (bounds[0], bounds[2]) for y in (bounds[1], bounds[3])]
    xs = [a * x + b * y + c for x, y in corners]
    ys = [d * x + e * y + f for x, y in corners]
    return min(xs), min(ys), max(xs), max(ys)


def _inside(bounds, size) -> bool:
    return bounds[0] >= 0 and bounds[1] >= 0 and bounds[2] <= size[1] - 1 and bounds[3] <= size[0] - 1


def _reflect_(points: torch.Tensor, size, bounds) -> None:
    """Mirror points outside an image of `size` back in about its edge pixels' centres, in place,
    as reflect padding of any width has them read (bilinear interpolation commutes with this).
    `bounds` (x0, y0, x1, y1) bound the points: within one image's width of it, one fold does."""
    for plane, n, lo, hi in ((points[0], size[1], bounds[0], bounds[2]), (points[1], size[0], bounds[1], bounds[3])):
        last = n - 1.0
        if lo >= 0 and hi <= last:
            continue
        if last == 0:
            plane.zero_()
            continue
        if lo < -last or hi > 2 * last:  # further out: first into one period, [0, 2 * last)
            plane.sub_(torch.floor(plane / (2 * last)).mul_(2 * last))
        plane.abs_().sub_(last).abs_().neg_().add_(last)  # last - ||v| - last|
