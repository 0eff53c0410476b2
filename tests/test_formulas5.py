"""Notebook 02's convolution and max-pooling (lepton_nb.conv), the cases its own test cells leave open, found by the
mutation run (benchmarks/mutation.md): default arguments, which gradients are asked for, gradients summed over many
chunks in low precision, batches that do not fill the last chunk, windows that read only padding, and the wording of
every error and `repr` a learner reads."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lepton_nb.conv as conv
from lepton_nb.conv import CHUNK_BYTES, Conv2d, MaxPool2d, conv2d, conv2d_unfold, conv_output_size, max_pool2d
from lepton_nb.core import LeptonError


def message(f, *args, **kw) -> str:
    with pytest.raises(LeptonError) as e: f(*args, **kw)
    return str(e.value)


def test_unfold_defaults_are_pytorchs():
    torch.manual_seed(0)
    x, w = torch.randn(2, 3, 7, 6, dtype=torch.float64), torch.randn(4, 3, 3, 2, dtype=torch.float64)
    torch.testing.assert_close(conv2d_unfold(x, w), F.conv2d(x, w))


def test_chunk_fills_the_buffer_on_the_cpu_and_takes_the_batch_elsewhere():
    cpu, meta = torch.device('cpu'), torch.device('meta')
    assert conv._chunk(10, 100, cpu) == 10                       # small images: the whole batch fits
    assert conv._chunk(10, CHUNK_BYTES, cpu) == 1
    assert conv._chunk(10, 3 * CHUNK_BYTES, cpu) == 1            # at least one image, however large
    assert conv._chunk(10**8, 1, cpu) == CHUNK_BYTES
    assert conv._chunk(10**8, 0, cpu) == CHUNK_BYTES
    assert conv._chunk(10, 3 * CHUNK_BYTES, meta) == 10          # not a CPU: the whole batch


@pytest.mark.parametrize('shape, want', [((8, 2, 2), True), ((2, 8, 2), True), ((2, 4, 4), True), ((1, 4, 8), True),
                                         ((31, 1, 1), False), ((1, 5, 6), False), ((3, 3, 3), False)])
def test_channels_last_from_32_numbers_a_patch(shape, want):
    assert conv._use_nhwc(torch.empty(1, *shape)) is want


def grads(x, w, b, **kw):
    "Gradients of conv2d and of F.conv2d for the same output gradient, for the tensors that ask for one."
    gy = torch.randn_like(F.conv2d(x, w, b, **kw))
    ours = torch.autograd.grad(conv2d(x, w, b, **kw), [t for t in (x, w, b) if t.requires_grad], gy)
    ref = torch.autograd.grad(F.conv2d(x, w, b, **kw), [t for t in (x, w, b) if t.requires_grad], gy)
    return ours, ref


@pytest.mark.parametrize('C', [1, 8])                            # 1 channel: the NCHW path; 8 x 3 x 3: channels-last
@pytest.mark.parametrize('needs', [(True, False, False), (False, True, False), (False, False, True),
                                   (True, False, True), (False, True, True), (True, True, False)])
def test_each_subset_of_gradients(C, needs):
    torch.manual_seed(1)
    x = torch.randn(3, C, 6, 5, dtype=torch.float64, requires_grad=needs[0])
    w = torch.randn(4, C, 3, 3, dtype=torch.float64, requires_grad=needs[1])
    b = torch.randn(4, dtype=torch.float64, requires_grad=needs[2])
    ours, ref = grads(x, w, b, padding=1, stride=(1, 2))
    assert len(ours) == sum(needs)
    for o, r in zip(ours, ref): torch.testing.assert_close(o, r)


@pytest.mark.parametrize('C', [1, 8])
def test_last_chunk_shorter_than_the_others(monkeypatch, C):
    torch.manual_seed(2)
    monkeypatch.setattr(conv, 'CHUNK_BYTES', 1)                  # one image a chunk...
    x = torch.randn(5, C, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, C, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    ours, ref = grads(x, w, b)
    for o, r in zip(ours, ref): torch.testing.assert_close(o, r)
    K, L = C * 9, 4 * 4
    monkeypatch.setattr(conv, 'CHUNK_BYTES', 2 * 2 * (K + 1) * L * 8)   # ...and two images a backward chunk: 2 + 2 + 1
    ours, ref = grads(x, w, b)
    for o, r in zip(ours, ref): torch.testing.assert_close(o, r)


@pytest.mark.parametrize('C', [1, 8])
def test_float64_gradients_are_summed_in_float64(monkeypatch, C):
    torch.manual_seed(3)
    monkeypatch.setattr(conv, 'CHUNK_BYTES', 1)
    x = torch.randn(16, C, 8, 8, dtype=torch.float64)
    w = torch.randn(4, C, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    ours, ref = grads(x, w, b)
    for o, r in zip(ours, ref): torch.testing.assert_close(o, r, rtol=1e-12, atol=1e-12)   # float32 sums: ~1e-7


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('C', [1, 8])
def test_half_precision_gradients_are_summed_in_float32(monkeypatch, dtype, C):
    "256 chunks of positive terms: summed in float32 the weight gradient is within 1%; in 16 bits it drifts by more."
    torch.manual_seed(4)
    monkeypatch.setattr(conv, 'CHUNK_BYTES', 1)                  # one image a chunk: 256 partial sums
    x, gy = torch.rand(256, C, 6, 6) + 0.5, torch.rand(256, 2, 4, 4) + 0.5
    w, b = torch.randn(2, C, 3, 3), torch.randn(2)
    xl, wl, bl = (t.to(dtype).requires_grad_() for t in (x, w, b))
    gw, gb = torch.autograd.grad(conv2d(xl, wl, bl), [wl, bl], gy.to(dtype))
    xr, wr, br = (t.to(dtype).double().requires_grad_() for t in (x, w, b))
    rw, rb = torch.autograd.grad(F.conv2d(xr, wr, br), [wr, br], gy.to(dtype).double())
    assert (gw.dtype, gb.dtype) == (dtype, dtype)
    assert ((gw.double() - rw).abs() / rw.abs()).max() < 0.01
    assert ((gb.double() - rb).abs() / rb.abs()).max() < 0.01


@pytest.mark.parametrize('C', [1, 8])
def test_backward_returns_the_gradients_dtype(monkeypatch, C):
    "The backward's own output, before autograd would cast it: bfloat16 gradients for bfloat16 tensors."
    x = torch.randn(2, C, 5, 5, dtype=torch.bfloat16)
    w, b = torch.randn(3, C, 3, 3, dtype=torch.bfloat16), torch.randn(3, dtype=torch.bfloat16)
    y, xp, nhwc = conv._conv_forward(x, w, b, (1, 1), (0, 0, 0, 0), (1, 1))
    for needs in ((True, True, True), (False, False, True)):
        out = conv._conv_backward(torch.ones_like(y), xp, w, x.shape, (1, 1), (0, 0, 0, 0), (1, 1), nhwc, needs)
        assert [None if t is None else t.dtype for t in out] == [torch.bfloat16 if n else None for n in needs]


def test_max_pool_errors_name_what_is_wrong():
    x = torch.zeros(1, 1, 4, 5)
    assert message(max_pool2d, [1.], 2) == 'max_pool2d: input must be a torch.Tensor, got list'
    assert message(max_pool2d, torch.zeros(1, 1, 4, 4, dtype=torch.int64), 2) == \
        'max_pool2d: input must be a floating-point tensor, got torch.int64'
    assert message(max_pool2d, torch.zeros(4, 4), 2) == \
        'max_pool2d: input must be N x C x H x W or C x H x W, got shape (4, 4)'
    assert message(max_pool2d, x, 0) == 'kernel_size must be at least 1, got 0'
    assert message(max_pool2d, x, 'a') == "kernel_size must be an int or a pair of ints, got 'a'"
    assert message(max_pool2d, x, 2, 0) == 'stride must be at least 1, got 0'
    assert message(max_pool2d, x, 2, 1, -1) == 'padding must be at least 0, got -1'
    assert message(max_pool2d, x, 2, 1, 'x') == "padding must be an int or a pair of ints, got 'x'"
    assert message(max_pool2d, x, (4, 2), 1, (1, 2)) == \
        'max_pool2d: padding (1, 2) must be at most half the kernel size (4, 2)'
    assert message(max_pool2d, x, 2, 1, (2, 0)) == 'max_pool2d: padding (2, 0) must be at most half the kernel size 2'
    assert message(max_pool2d, torch.zeros(1, 1, 3, 7), (5, 2)) == \
        'max_pool2d: the 5x2 window does not fit in the 3x7 input'
    assert message(max_pool2d, torch.zeros(1, 1, 7, 3), (2, 4)) == \
        'max_pool2d: the 2x4 window does not fit in the 7x3 input'


@pytest.mark.parametrize('k, s, p', [(2, None, 0), (3, 2, 1), (2, 1, 1), ((3, 2), (1, 2), (1, 0))])
def test_max_pool_unbatched_and_padded_like_pytorch(k, s, p):
    torch.manual_seed(5)
    x = torch.randn(2, 5, 6)                                     # C x H x W: no batch dimension
    torch.testing.assert_close(max_pool2d(x, k, s, p), F.max_pool2d(x, k, s, p))
    assert max_pool2d(x, k, s, p).shape == F.max_pool2d(x[None], k, s, p).shape[1:]
    torch.testing.assert_close(MaxPool2d(k, s, p)(x), nn.MaxPool2d(k, s, p)(x))


def test_max_pool_window_that_fits_only_with_its_padding():
    x = torch.tensor([[[[3.]]]])
    torch.testing.assert_close(max_pool2d(x, 2, padding=1), F.max_pool2d(x, 2, padding=1))


def test_max_pool_gradient_where_a_window_holds_only_minus_infinity():
    "Every real pixel of a corner window is -inf: its first arg-max is padding; the gradient goes to the nearest pixel."
    inf = torch.inf
    x = torch.tensor([[[[-inf, -inf, 2., 1.], [-inf, -inf, 5., 0.], [6., 7., -inf, -inf], [1., 2., -inf, -inf]]]])
    for k, s in ((3, 2), (3, 1)):
        xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        y, yr = max_pool2d(xo, k, s, 1), F.max_pool2d(xr, k, s, 1)
        g = torch.rand_like(y)
        y.backward(g); yr.backward(g)
        torch.testing.assert_close(y, yr)
        torch.testing.assert_close(xo.grad, xr.grad)


def test_conv2d_module_checks_its_arguments_by_name():
    assert message(Conv2d, 1, 1, 3, padding_mode='reflect') == \
        "Conv2d: only padding_mode='zeros' is implemented, got 'reflect'"
    assert message(Conv2d, 1, 1, 0) == 'kernel_size must be at least 1, got 0'
    assert message(Conv2d, 1, 1, 'k') == "kernel_size must be an int or a pair of ints, got 'k'"
    assert message(Conv2d, 1, 1, 3, 0) == 'stride must be at least 1, got 0'
    assert message(Conv2d, 1, 1, 3, (1, 'a')) == "stride must be an int or a pair of ints, got (1, 'a')"
    assert message(Conv2d, 1, 1, 3, dilation=0) == 'dilation must be at least 1, got 0'
    assert message(Conv2d, 1, 1, 3, dilation=1.5) == 'dilation must be an int or a pair of ints, got 1.5'
    assert message(Conv2d, 1, 1, 3, padding=-1) == 'padding must be at least 0, got -1'
    assert message(Conv2d, 1, 1, 3, padding=(1,)) == 'padding must be an int or a pair of ints, got (1,)'
    assert Conv2d(1, 1, 3, padding=1).padding == (1, 1) and Conv2d(1, 1, 3, padding='same').padding == 'same'


def test_conv2d_module_dtype_device_and_one_output_channel():
    m = Conv2d(2, 3, 3, dtype=torch.float64)
    assert m.weight.dtype == m.bias.dtype == torch.float64
    m = Conv2d(2, 3, 3, device='meta')
    assert m.weight.device.type == m.bias.device.type == 'meta'
    torch.manual_seed(6); ours = Conv2d(2, 1, 3)                 # one output channel: weight[0] is all there is
    torch.manual_seed(6); ref = nn.Conv2d(2, 1, 3)
    torch.testing.assert_close((ours.weight, ours.bias), (ref.weight, ref.bias))


@pytest.mark.parametrize('kw, want', [
    (dict(), '1, 2, kernel_size=(3, 3), stride=(1, 1)'),
    (dict(padding=1), '1, 2, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)'),
    (dict(padding=(1, 0)), '1, 2, kernel_size=(3, 3), stride=(1, 1), padding=(1, 0)'),
    (dict(padding=(0, 1)), '1, 2, kernel_size=(3, 3), stride=(1, 1), padding=(0, 1)'),
    (dict(padding='valid'), '1, 2, kernel_size=(3, 3), stride=(1, 1)'),
    (dict(padding='same'), '1, 2, kernel_size=(3, 3), stride=(1, 1), padding=same'),
    (dict(dilation=(2, 1)), '1, 2, kernel_size=(3, 3), stride=(1, 1), dilation=(2, 1)'),
    (dict(dilation=(1, 2), padding=1, bias=False),
     '1, 2, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 2), bias=False'),
])
def test_conv2d_repr_reads_like_pytorchs(kw, want):
    assert Conv2d(1, 2, 3, **kw).extra_repr() == want


def test_max_pool_module_arguments_and_repr():
    want = 'MaxPool2d: dilation, return_indices and ceil_mode are not implemented (use their defaults)'
    for bad in (dict(dilation=2), dict(dilation=(2, 1)), dict(dilation=(1, 2)), dict(return_indices=True),
                dict(ceil_mode=True)):
        assert message(MaxPool2d, 2, **bad) == want
    assert MaxPool2d(2).extra_repr() == 'kernel_size=2, stride=2, padding=0'
    assert MaxPool2d(3, 2, 1).extra_repr() == 'kernel_size=3, stride=2, padding=1'


def test_conv2d_errors_name_what_is_wrong():
    x, w = torch.zeros(1, 1, 5, 5), torch.zeros(1, 1, 3, 3)
    assert message(conv2d, [1.], w) == 'conv2d: input must be a torch.Tensor, got list'
    assert message(conv2d, x, [1.]) == 'conv2d: weight must be a torch.Tensor, got list'
    assert message(conv2d, x, w, [1.]) == 'conv2d: bias must be a torch.Tensor, got list'
    assert message(conv2d, x.int(), w) == 'conv2d: input must be a floating-point tensor, got torch.int32'
    assert message(conv2d, x, w.int()) == 'conv2d: weight must be a floating-point tensor, got torch.int32'
    assert message(conv2d, x, w, torch.zeros(1, dtype=torch.int64)) == \
        'conv2d: bias must be a floating-point tensor, got torch.int64'
    assert message(conv2d, x, torch.zeros(1, 1, 3)) == \
        'conv2d: weight must be out_channels x in_channels x kh x kw, got shape (1, 1, 3)'
    assert message(conv2d, x, w, stride=0) == 'stride must be at least 1, got 0'
    assert message(conv2d, x, w, stride='s') == "stride must be an int or a pair of ints, got 's'"
    assert message(conv2d, x, w, dilation=0) == 'dilation must be at least 1, got 0'
    assert message(conv2d, x, w, dilation='d') == "dilation must be an int or a pair of ints, got 'd'"
    assert message(conv2d, x, w, dilation=3) == \
        'conv2d: the 3x3 kernel (dilation (3, 3)) does not fit in the 5x5 input padded by 0'
    assert message(conv2d, torch.zeros(1, 1, 2, 5), w) == \
        'conv2d: the 3x3 kernel (dilation (1, 1)) does not fit in the 2x5 input padded by 0'
    assert message(conv2d, x, w, stride=2, padding='same') == "conv2d: padding='same' needs stride 1 (as in PyTorch)"
    assert message(conv2d, x, w, torch.zeros(1, dtype=torch.float64)) == \
        'conv2d: input, weight and bias must have one dtype, got torch.float32, torch.float32, torch.float64'
    assert message(conv2d, x, w, torch.zeros(1, device='meta')) == \
        'conv2d: input, weight and bias must be on one device, got cpu, cpu, meta'
    assert message(conv2d, x, w.to('meta')) == 'conv2d: input, weight and bias must be on one device, got cpu, meta'


def test_output_size_checks_each_argument_by_name():
    assert message(conv_output_size, (5, 'a'), 3) == "size must be an int or a pair of ints, got (5, 'a')"
    assert message(conv_output_size, (5, -1), 3) == 'size must be at least 0, got (5, -1)'
    assert conv_output_size((0, 5), 3, 1, 1) == (0, 5)                      # an empty side is a size
    assert message(conv_output_size, (5, 5), 0) == 'kernel_size must be at least 1, got 0'
    assert message(conv_output_size, (5, 5), 'k') == "kernel_size must be an int or a pair of ints, got 'k'"
    assert message(conv_output_size, (5, 5), 3, 0) == 'stride must be at least 1, got 0'
    assert message(conv_output_size, (5, 5), 3, 1, -1) == 'padding must be at least 0, got -1'
    assert message(conv_output_size, (5, 5), 3, 1, 'p') == "padding must be an int or a pair of ints, got 'p'"
    assert message(conv_output_size, (5, 5), 3, 1, 0, 0) == 'dilation must be at least 1, got 0'
    assert message(conv_output_size, (5, 5), 3, 1, 0, 'd') == "dilation must be an int or a pair of ints, got 'd'"


@pytest.mark.parametrize('C', [1, 8])
def test_forward_over_many_chunks(monkeypatch, C):
    "One image a chunk, and two: every image of the batch is computed (the output buffer starts uninitialised)."
    torch.manual_seed(7)
    x, w, b = torch.randn(5, C, 6, 6), torch.randn(3, C, 3, 3), torch.randn(3)
    for chunk in (1, 2 * (C * 9 + 1) * 16 * 4):
        monkeypatch.setattr(conv, 'CHUNK_BYTES', chunk)
        torch.testing.assert_close(conv2d(x, w, b, padding=1), F.conv2d(x, w, b, padding=1))


def test_autocast_with_and_without_a_bias():
    torch.manual_seed(8)
    x, w, b = torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3), torch.randn(4) * 10
    with torch.autocast('cpu', dtype=torch.bfloat16):
        ours, ref = conv2d(x, w, b), F.conv2d(x, w, b)
    assert ours.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), ref.float(), rtol=2e-2, atol=5e-2)
    with torch.autocast('cpu', dtype=torch.bfloat16):                     # and without a bias
        torch.testing.assert_close(conv2d(x, w).float(), F.conv2d(x, w).float(), rtol=2e-2, atol=5e-2)
