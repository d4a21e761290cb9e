"""Winograd F(m x m, 3x3) for the NHWC convolutions of CPU targets.

Most of a ResNet's FLOPs are in 3x3 stride-1 convolutions; the libraries run them as direct
convolutions at the machine's peak. Winograd's minimal filtering computes an m x m output tile
from an (m+2) x (m+2) input tile with (m+2)^2 multiplies per input/output channel pair instead
of 9 m^2: 4x fewer for F(4x4, 3x3), 2.25x for F(2x2, 3x3). The convolution becomes

    data_pack = B^T d B       per input tile and channel     (transform, memory-bound)
    bgemm     = data_pack x U  (m+2)^2 matrix products        (most of the multiplies)
    output    = A^T bgemm A   per output tile                (inverse transform)

where U = G g G^T is the transformed kernel. The kernel transform is a separate function of
the weights only, so it is lifted out of the model and folded once at build time; the
tuning task is the convolution on already-transformed weights (U laid out [eps, nu, CI, CO]:
the output channels contiguous, the vector of the batched products). MetaSchedule's CPU rules
for the transforms (``conv2d_nhwc_winograd_data_pack`` / ``_inverse``) unroll the (m+2)^2
constant-matrix products; the batched products get its multi-level tiling.

The tile size follows the output: 4 where it divides the output's height and width, else 2
(a 14x14 map in 4x4 tiles computes 16x16, 31% waste; in 2x2 tiles none), and nothing for maps
smaller than 8x8, whose few tiles make the products too thin to beat a direct convolution.
F(4x4) on whole tiles that overhang a map 4 does not divide was measured in session 24
(benchmarks/README.md): tuned, it is faster where the padding is small (resnet50 at 392 on znver5:
49x49 and 25x25 24-39% faster a kernel), but its default schedule is 3-7x slower than tuned (untuned
resnet18 at 168 and 392 twice as slow), which untuned builds and classes without records would get;
it stays off until that schedule is fixed.
Winograd's float32 error grows with m; build's verification against PyTorch still applies.
"""

from __future__ import annotations

MIN_SIDE = 8  # output maps smaller than this stay direct convolutions


def tile_size(out_h: int, out_w: int) -> int | None:
    """The Winograd output tile for an out_h x out_w map, or None for a direct convolution."""
    if min(out_h, out_w) < MIN_SIDE:
        return None
    return 4 if out_h % 4 == 0 and out_w % 4 == 0 else 2


def qualifies(call) -> bool:
    """Whether a ``relax.nn.conv2d`` call is a 3x3 stride-1 float32 NHWC/HWIO convolution without groups."""
    a = call.attrs
    shape = [int(s) for s in call.args[1].ty.shape]
    return (a.data_layout == "NHWC" and a.kernel_layout == "HWIO" and a.out_layout == "NHWC"
            and shape[:2] == [3, 3] and [int(s) for s in a.strides] == [1, 1]
            and [int(d) for d in a.dilation] == [1, 1] and int(a.groups) == 1
            and call.args[0].ty.dtype == "float32" and a.out_dtype in (None, "", "float32"))


def kernel_transform(weight, m: int):
    """U = G g G^T for HWIO weights: [m+2, m+2, CI, CO]."""
    from tvm import te
    from tvm.topi.nn.winograd_util import winograd_transform_matrices

    kh, kw, ci, co = (int(s) for s in weight.shape)
    _, _, G = winograd_transform_matrices(m, 3, str(weight.dtype))
    r_kh = te.reduce_axis((0, kh), name="r_kh")
    r_kw = te.reduce_axis((0, kw), name="r_kw")
    return te.compute((m + 2, m + 2, ci, co),
                      lambda eps, nu, i, o: te.sum(weight[r_kh, r_kw, i, o] * G[eps, r_kh] * G[nu, r_kw],
                                                   axis=[r_kh, r_kw]),
                      name="winograd_kernel")


def conv(data, kernel_pack, m: int, padding):
    """The NHWC convolution of ``data`` with transformed weights ``kernel_pack`` ([m+2, m+2, CI, CO]),
    ``padding`` as (top, left, bottom, right)."""
    from tvm import te, topi
    from tvm.topi.nn.winograd_util import winograd_transform_matrices

    n, h, w, ci = (int(s) for s in data.shape)
    alpha, co = m + 2, int(kernel_pack.shape[3])
    top, left, bottom, right = (int(p) for p in padding)
    out_h, out_w = h + top + bottom - 2, w + left + right - 2
    n_h, n_w = (out_h + m - 1) // m, (out_w + m - 1) // m
    tiles = n * n_h * n_w
    A, B, _ = winograd_transform_matrices(m, 3, str(data.dtype))
    # pad to whole tiles: the last tile reads up to row (n_h - 1) * m + alpha - 1
    data_pad = topi.nn.pad(data, (0, top, left, 0),
                           (0, (n_h - 1) * m + alpha - h - top, (n_w - 1) * m + alpha - w - left, 0),
                           name="data_pad", attrs={"schedule_rule": "None"})
    input_tile = te.compute(
        (alpha, alpha, tiles, ci),
        lambda eps, nu, p, c: data_pad[p // (n_h * n_w), (p // n_w) % n_h * m + eps, p % n_w * m + nu, c],
        name="input_tile", attrs={"schedule_rule": "None"})
    r_a, r_b = te.reduce_axis((0, alpha), "r_a"), te.reduce_axis((0, alpha), "r_b")
    data_pack = te.compute(
        (alpha, alpha, tiles, ci),
        lambda eps, nu, p, c: te.sum(input_tile[r_a, r_b, p, c] * B[r_a, eps] * B[r_b, nu], axis=[r_a, r_b]),
        name="data_pack", attrs={"schedule_rule": "conv2d_nhwc_winograd_data_pack"})
    r_c = te.reduce_axis((0, ci), name="r_c")
    bgemm = te.compute(
        (alpha, alpha, tiles, co),
        lambda eps, nu, p, o: te.sum(data_pack[eps, nu, p, r_c] * kernel_pack[eps, nu, r_c, o], axis=[r_c]),
        name="bgemm", attrs={"layout_free_placeholders": [kernel_pack]})
    r_a, r_b = te.reduce_axis((0, alpha), "r_a"), te.reduce_axis((0, alpha), "r_b")
    inverse = te.compute(
        (m, m, tiles, co),
        lambda vh, vw, p, o: te.sum(bgemm[r_a, r_b, p, o] * A[r_a, vh] * A[r_b, vw], axis=[r_a, r_b]),
        name="inverse", attrs={"schedule_rule": "conv2d_nhwc_winograd_inverse"})
    return te.compute(
        (n, out_h, out_w, co),
        lambda b, y, x, o: inverse[y % m, x % m, b * n_h * n_w + y // m * n_w + x // m, o],
        name="conv2d_winograd")


def legalize(bb, call):
    """LegalizeOps' rule for ``relax.nn.conv2d``: Winograd where it qualifies and pays, else TVM's own."""
    import tvm

    m, padding = None, tuple(int(p) for p in call.attrs.padding)
    if qualifies(call):
        _, h, w, _ = (int(s) for s in call.args[0].ty.shape)
        top, left, bottom, right = padding
        m = tile_size(h + top + bottom - 2, w + left + right - 2)
    if m is None:
        return tvm.ir.Op.get("relax.nn.conv2d").get_attr("FLegalize")(bb, call)
    kernel_pack = bb.emit(bb.call_te(kernel_transform, call.args[1], m, primfunc_name_hint="winograd_kernel"))
    return bb.call_te(conv, call.args[0], kernel_pack, m, padding,
                      primfunc_name_hint=f"conv2d_winograd{m}")
