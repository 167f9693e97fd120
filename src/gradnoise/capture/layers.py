"""Per-example gradient rules of common layers, from a layer's input and output gradient.

For an example b with layer input ``x_b`` and output gradient ``g_b = dL_b/dy_b``, the per-example
parameter gradient has closed forms, e.g. ``dL_b/dW = sum_s g_bs x_bs^T`` for ``y = W x + c``
(Linear; the sum runs over sequence positions). A Conv's per-example weight gradients are the
weight gradient of a single convolution whose groups are the examples. Writing these products
straight into the caller's output buffer is what makes the structured backend fast: no ``[B, P]``
temporary is materialised for Linear layers.

A rule is registered per exact module type in :data:`LAYER_RULES`; add one with
:func:`register_layer_rule`. A parameter whose module has no rule (or a configuration the rule
does not support, or that the audit of :mod:`gradnoise.capture.audit` finds used outside its
module) takes the general path: ``torch.func``, or a loop of one backward per example.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class LayerRule:
    """How to compute per-example gradients of one module type.

    Attributes:
        supports: ``supports(module) -> bool``; False routes the module's parameters to the
            general path.
        compute: ``compute(module, pname, x, g, index, dest, accumulate)``: write (or add, when
            ``accumulate``) the per-example gradient of parameter ``pname`` for the ``c`` examples
            of input ``x`` and output gradient ``g`` into ``dest`` (``[c, width]``). ``index`` is
            a LongTensor of selected flat coordinates, or None for all of them.
        params: the parameter names the rule computes (others, e.g. ``weight_orig`` registered by
            ``spectral_norm``, take the general path).

    A rule is only used for a parameter after :func:`gradnoise.capture.audit_model` has checked,
    on a probe batch, that the parameter is read only inside its module's own calls and that the
    rule reproduces the one-example-at-a-time gradients.
    """

    supports: Callable[[nn.Module], bool]
    compute: Callable[[nn.Module, str, Tensor, Tensor, Tensor | None, Tensor, bool], None]
    params: frozenset[str] = frozenset({"weight", "bias"})


def _emit(dest: Tensor, value: Tensor, index: Tensor | None, accumulate: bool) -> None:
    value = value.reshape(value.shape[0], -1)
    if index is not None:
        value = value.index_select(1, index)
    if accumulate:
        dest.add_(value)
    else:
        dest.copy_(value)


def _as_sequence(t: Tensor) -> Tensor:
    """``[c, ..., f] -> [c, s, f]`` (s = product of the middle dims)."""
    return t.reshape(t.shape[0], -1, t.shape[-1])


def _linear(
    m: nn.Module,
    pname: str,
    x: Tensor,
    g: Tensor,
    index: Tensor | None,
    dest: Tensor,
    accumulate: bool,
) -> None:
    c = x.shape[0]
    flat = x.dim() == 2
    if not flat:
        x, g = _as_sequence(x), _as_sequence(g)
    if pname == "bias":
        _emit(dest, g if flat else g.sum(1), index, accumulate)
        return
    n_out, n_in = g.shape[-1], x.shape[-1]
    if index is not None:
        rows, cols = index // n_in, index % n_in
        if flat:
            value = g.index_select(1, rows) * x.index_select(1, cols)
        else:
            value = (g.index_select(2, rows) * x.index_select(2, cols)).sum(1)
        _emit(dest, value, None, accumulate)
        return
    view = dest.view(c, n_out, n_in)
    if flat:
        if accumulate:
            view.addcmul_(g[:, :, None], x[:, None, :])
        else:
            torch.mul(g[:, :, None], x[:, None, :], out=view)
    else:
        value = torch.bmm(g.transpose(1, 2), x)
        if accumulate:
            view.add_(value)
        else:
            view.copy_(value)


_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _conv_geometry(m: nn.Module) -> tuple[tuple[int, ...], ...] | None:
    """(kernel, dilation, padding, stride) as 2-D tuples (Conv1d: a leading 1 or 0 is added), or
    None when the convolution pads its input itself (see :func:`conv_input`)."""
    assert isinstance(m, (nn.Conv1d, nn.Conv2d))
    padding = _symmetric_zero_padding(m)
    if padding is None:
        return None
    kernel, dilation, stride = m.kernel_size, m.dilation, m.stride
    if isinstance(m, nn.Conv1d):
        return (1, *kernel), (1, *dilation), (0, *padding), (1, *stride)
    return tuple(kernel), tuple(dilation), padding, tuple(stride)


def _symmetric_zero_padding(m: nn.Module) -> tuple[int, ...] | None:
    """The padding a zero-padded convolution passes to the kernel, or None when the input has to
    be padded first (other padding modes, asymmetric 'same' padding)."""
    if m.padding_mode != "zeros":
        return None
    if isinstance(m.padding, str):
        if m.padding == "valid":
            return tuple(0 for _ in m.kernel_size)
        total = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size, strict=True)]
        if any(t % 2 for t in total):
            return None
        return tuple(t // 2 for t in total)
    return tuple(m.padding)


def conv_input(m: nn.Module, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """The input a convolution's kernel sees and the padding still to apply: ``(x, padding)``, or
    ``(padded x, zeros)`` for reflect/replicate/circular padding and asymmetric 'same' padding
    (exactly what ``Conv._conv_forward`` does)."""
    padding = _symmetric_zero_padding(m)
    if padding is not None:
        return x, padding
    mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
    padded = F.pad(x, m._reversed_padding_repeated_twice, mode=mode)
    return padded, tuple(0 for _ in m.kernel_size)


def _conv(
    m: nn.Module,
    pname: str,
    x: Tensor,
    g: Tensor,
    index: Tensor | None,
    dest: Tensor,
    accumulate: bool,
) -> None:
    assert isinstance(m, _CONV + _CONV_T)
    c, c_out = x.shape[0], g.shape[1]
    if pname == "bias":
        _emit(dest, g.reshape(c, c_out, -1).sum(2), index, accumulate)
        return
    _emit(dest, conv_weight_grad(m, x, g, per_example=True).reshape(c, -1), index, accumulate)


def conv_weight_grad(m: nn.Module, x: Tensor, g: Tensor, *, per_example: bool) -> Tensor:
    """A convolution's weight gradient from its input ``x`` and output gradient ``g``: summed
    over the batch, or per example (``[c, *weight.shape]``) as the weight gradient of one
    convolution in which the examples become groups (inputs ``[1, c*C_in, ...]``, output
    gradients ``[1, c*C_out, ...]``, ``c*G`` groups)."""
    assert isinstance(m, _CONV + _CONV_T)
    dims = x.dim() - 2
    transposed = isinstance(m, _CONV_T)
    if transposed:
        padding = tuple(m.padding)
        out_pad = [
            g.shape[2 + d]
            - (
                (x.shape[2 + d] - 1) * m.stride[d]
                - 2 * padding[d]
                + m.dilation[d] * (m.kernel_size[d] - 1)
                + 1
            )
            for d in range(dims)
        ]
    else:
        x, padding = conv_input(m, x)
        out_pad = [0] * dims
    c = x.shape[0] if per_example else 1
    weight_shape = (c * m.weight.shape[0], *m.weight.shape[1:])
    if per_example:
        g = g.reshape(1, c * g.shape[1], *g.shape[2:])
        x = x.reshape(1, c * x.shape[1], *x.shape[2:])
    _, value, _ = torch.ops.aten.convolution_backward(
        g,
        x,
        x.new_empty(weight_shape),
        None,
        list(m.stride),
        list(padding),
        list(m.dilation),
        transposed,
        out_pad,
        m.groups * c,
        [False, True, False],
    )
    return value.reshape(c, *m.weight.shape) if per_example else value


def _group_norm(
    m: nn.Module,
    pname: str,
    x: Tensor,
    g: Tensor,
    index: Tensor | None,
    dest: Tensor,
    accumulate: bool,
) -> None:
    assert isinstance(m, nn.GroupNorm)
    c, channels = x.shape[0], x.shape[1]
    if pname == "weight":
        g = g * F.group_norm(x, m.num_groups, eps=m.eps)
    _emit(dest, g.reshape(c, channels, -1).sum(2), index, accumulate)


def _trailing_norm(
    m: nn.Module,
    pname: str,
    x: Tensor,
    g: Tensor,
    index: Tensor | None,
    dest: Tensor,
    accumulate: bool,
) -> None:
    """LayerNorm and RMSNorm: affine parameters over the trailing ``normalized_shape``."""
    assert isinstance(m, (nn.LayerNorm, nn.RMSNorm))
    shape = tuple(m.normalized_shape)
    width = math.prod(shape)
    if pname == "weight":
        norm = F.rms_norm if isinstance(m, nn.RMSNorm) else F.layer_norm
        g = g * norm(x, shape, eps=m.eps)
    _emit(dest, g.reshape(x.shape[0], -1, width).sum(1), index, accumulate)


def _instance_norm(
    m: nn.Module,
    pname: str,
    x: Tensor,
    g: Tensor,
    index: Tensor | None,
    dest: Tensor,
    accumulate: bool,
) -> None:
    assert isinstance(m, nn.modules.instancenorm._InstanceNorm)
    c, channels = x.shape[0], x.shape[1]
    if pname == "weight":
        if m.training or not m.track_running_stats:
            normed = F.instance_norm(x, eps=m.eps)
        else:
            assert m.running_mean is not None and m.running_var is not None
            view = (1, channels) + (1,) * (x.dim() - 2)
            normed = (x - m.running_mean.view(view)) * torch.rsqrt(m.running_var.view(view) + m.eps)
        g = g * normed
    _emit(dest, g.reshape(c, channels, -1).sum(2), index, accumulate)


def _embedding(
    m: nn.Module,
    pname: str,
    x: Tensor,
    g: Tensor,
    index: Tensor | None,
    dest: Tensor,
    accumulate: bool,
) -> None:
    assert isinstance(m, nn.Embedding)
    c, dim = x.shape[0], m.embedding_dim
    tokens = x.reshape(c, -1)
    g = g.reshape(c, -1, dim)
    if m.padding_idx is not None:
        g = g.masked_fill((tokens == m.padding_idx)[..., None], 0.0)
    scatter_index = tokens[..., None].expand(-1, -1, dim)
    if index is None:
        view = dest.view(c, m.num_embeddings, dim)
        if not accumulate:
            view.zero_()
        view.scatter_add_(1, scatter_index, g)
        return
    full = torch.zeros(c, m.num_embeddings, dim, dtype=g.dtype, device=g.device)
    full.scatter_add_(1, scatter_index, g)
    _emit(dest, full, index, accumulate)


def _always(m: nn.Module) -> bool:
    return True


def _batched_instance_norm(m: nn.Module) -> bool:
    return bool(m.affine)


LAYER_RULES: dict[type[nn.Module], LayerRule] = {
    nn.Linear: LayerRule(_always, _linear),
    nn.Conv1d: LayerRule(_always, _conv),
    nn.Conv2d: LayerRule(_always, _conv),
    nn.Conv3d: LayerRule(_always, _conv),
    nn.ConvTranspose1d: LayerRule(_always, _conv),
    nn.ConvTranspose2d: LayerRule(_always, _conv),
    nn.ConvTranspose3d: LayerRule(_always, _conv),
    nn.GroupNorm: LayerRule(_always, _group_norm),
    nn.LayerNorm: LayerRule(_always, _trailing_norm),
    nn.RMSNorm: LayerRule(_always, _trailing_norm, frozenset({"weight"})),
    nn.InstanceNorm1d: LayerRule(_batched_instance_norm, _instance_norm),
    nn.InstanceNorm2d: LayerRule(_batched_instance_norm, _instance_norm),
    nn.InstanceNorm3d: LayerRule(_batched_instance_norm, _instance_norm),
    nn.Embedding: LayerRule(
        lambda m: isinstance(m, nn.Embedding) and not m.scale_grad_by_freq,
        _embedding,
        frozenset({"weight"}),
    ),
}


def register_layer_rule(
    module_type: type[nn.Module], rule: LayerRule, *, overwrite: bool = False
) -> None:
    """Add a per-example gradient rule for ``module_type`` (exact type match)."""
    if module_type in LAYER_RULES and not overwrite:
        raise ValueError(
            f"a rule for {module_type.__name__} exists; pass overwrite=True to replace it"
        )
    LAYER_RULES[module_type] = rule
