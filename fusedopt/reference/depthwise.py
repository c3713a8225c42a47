"""Float64 depthwise convolution from the definition: zero-pad, then for every tap add
weight[o, 0, i, j] times the strided window of input channel o // M that the tap reads.
Gradients come from autograd through these plain tensor operations (slicing, products,
sums), never from a convolution kernel or from fusedopt."""
import torch


def depthwise_conv2d(input, weight, bias=None, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1)):
    """out[n, o, y, x] = bias[o] + sum_{i,j} weight[o,0,i,j] * pad(input)[n, o//M, y*sh + i*dh, x*sw + j*dw].

    padding is (top, bottom, left, right); computed in float64."""
    x = input.to(torch.float64)
    w = weight.to(torch.float64)
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    m = o // c
    (sh, sw), (dh, dw) = stride, dilation
    pt, pb, pl, pr = padding
    xp = x.new_zeros((n, c, h + pt + pb, wd + pl + pr))
    xp[:, :, pt:pt + h, pl:pl + wd] = x
    xp = xp.repeat_interleave(m, dim=1)  # output channel o reads input channel o // m
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    out = x.new_zeros((n, o, oh, ow))
    for i in range(kh):
        for j in range(kw):
            window = xp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
            out = out + window * w[:, 0, i, j].view(1, o, 1, 1)
    if bias is not None:
        out = out + bias.to(torch.float64).view(1, o, 1, 1)
    return out


def depthwise_conv2d_grads(grad_out, input, weight, bias=None, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1)):
    """(grad_input, grad_weight, grad_bias or None) of depthwise_conv2d, in float64."""
    x = input.detach().to(torch.float64).requires_grad_()
    w = weight.detach().to(torch.float64).requires_grad_()
    b = None if bias is None else bias.detach().to(torch.float64).requires_grad_()
    out = depthwise_conv2d(x, w, b, stride, padding, dilation)
    grads = torch.autograd.grad(out, [t for t in (x, w, b) if t is not None], grad_out.to(device=x.device, dtype=torch.float64))
    return grads[0], grads[1], (grads[2] if b is not None else None)


def depthwise_separable_conv2d(input, depthwise_weight, pointwise_weight, bias=None, stride=(1, 1),
                               padding=(0, 0, 0, 0), dilation=(1, 1)):
    """Depthwise (no bias) then out[n, p] = bias[p] + sum_o pointwise_weight[p, o] * mid[n, o], in float64."""
    mid = depthwise_conv2d(input, depthwise_weight, None, stride, padding, dilation)
    pw = pointwise_weight.to(torch.float64)[:, :, 0, 0]
    out = (mid.unsqueeze(1) * pw[None, :, :, None, None]).sum(dim=2)
    if bias is not None:
        out = out + bias.to(torch.float64).view(1, -1, 1, 1)
    return out
