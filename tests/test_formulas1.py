"""Activations (01) and convolution (02) against PyTorch on random configurations other than the notebooks' seeds,
and the contract of `bench_conv` that `lepton bench` relies on."""
import json, random
import pytest
import torch
import torch.nn.functional as F
from lepton_nb.activations import relu, sigmoid, tanh, ReLU, Sigmoid, Tanh
from lepton_nb.conv import conv2d, max_pool2d, conv_output_size, Conv2d, MaxPool2d
from lepton_nb.bench import bench_conv
from lepton_nb.core import LeptonError

@pytest.fixture(autouse=True)
def one_thread():
    "Tiny tensors: one thread is faster and immune to a busy machine."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def _grads(y, ins, g): return torch.autograd.grad(y, [t for t in ins if t is not None and t.requires_grad], g)

@pytest.mark.parametrize('seed', [11, 12])
def test_conv2d_random(seed):
    rng = random.Random(seed)
    done = 0
    while done < 60:
        N, C, O = rng.randint(1, 4), rng.choice([1, 3, 5, 9, 12]), rng.randint(1, 7)
        kh, kw = rng.randint(1, 4), rng.randint(1, 4)
        s, p = (rng.randint(1, 3), rng.randint(1, 3)), (rng.randint(0, 3), rng.randint(0, 2))
        d = (rng.randint(1, 3), rng.randint(1, 2))
        H, W = rng.randint(1, 16), rng.randint(1, 16)
        if min(conv_output_size((H, W), (kh, kw), s, p, d)) < 1: continue
        x = torch.randn(N, C, H, W, dtype=torch.float64)
        if rng.random() < 0.5: x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(rng.random() < 0.8)
        w = torch.randn(O, C, kh, kw, dtype=torch.float64, requires_grad=True)
        b = torch.randn(O, dtype=torch.float64, requires_grad=True) if rng.random() < 0.5 else None
        y, yr = conv2d(x, w, b, s, p, d), F.conv2d(x, w, b, s, p, d)
        torch.testing.assert_close(y, yr)
        g = torch.randn_like(yr)
        for a, r in zip(_grads(y, (x, w, b), g), _grads(yr, (x, w, b), g)): torch.testing.assert_close(a, r)
        done += 1

@pytest.mark.parametrize('seed', [21, 22])
def test_max_pool2d_random(seed):
    rng = random.Random(seed)
    for trial in range(80):
        k = (rng.randint(1, 5), rng.randint(1, 5))
        s = rng.choice([None, k, (rng.randint(1, 5), rng.randint(1, 5))])
        p = (rng.randint(0, k[0] // 2), rng.randint(0, k[1] // 2))
        x = torch.randn(rng.randint(1, 3), rng.randint(1, 4), rng.randint(k[0], 17), rng.randint(k[1], 17),
                        dtype=torch.float64)
        if trial % 2: x = x.mul(2).round().relu()
        if rng.random() < 0.5: x = x.contiguous(memory_format=torch.channels_last)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        y, yr = max_pool2d(xa, k, s, p), F.max_pool2d(xb, k, s, p)
        torch.testing.assert_close(y, yr, rtol=0, atol=0)
        g = torch.randn_like(yr)
        torch.testing.assert_close(torch.autograd.grad(y, xa, g)[0], torch.autograd.grad(yr, xb, g)[0])

@pytest.mark.parametrize('ours,theirs', [(relu, torch.relu), (sigmoid, torch.sigmoid), (tanh, torch.tanh)])
def test_activations_random(ours, theirs):
    gen = torch.Generator().manual_seed(31)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        for _ in range(5):
            shape = tuple(torch.randint(0, 6, (int(torch.randint(0, 5, (1,), generator=gen)),), generator=gen).tolist())
            x = (torch.randn(shape, generator=gen) * 20).to(dtype)
            a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
            ya, yb = ours(a), theirs(b)
            torch.testing.assert_close(ya, yb)
            g = torch.randn(shape, generator=gen).to(dtype)
            torch.testing.assert_close(torch.autograd.grad(ya, a, g)[0], torch.autograd.grad(yb, b, g)[0])

def test_modules_swap_with_torch():
    torch.manual_seed(0)
    ours = torch.nn.Sequential(Conv2d(3, 4, 3, padding=1), ReLU(), MaxPool2d(2), Conv2d(4, 8, 3), Tanh(),
                               torch.nn.Flatten(), torch.nn.Linear(8, 1), Sigmoid())
    theirs = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                 torch.nn.Conv2d(4, 8, 3), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(8, 1),
                                 torch.nn.Sigmoid())
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 3, 6, 6)
    torch.testing.assert_close(ours(x), theirs(x))

def test_bad_input_is_one_clear_error():
    with pytest.raises(LeptonError, match='channels'): conv2d(torch.randn(1, 2, 5, 5), torch.randn(3, 1, 3, 3))
    with pytest.raises(LeptonError, match='does not fit'): max_pool2d(torch.randn(1, 1, 2, 2), 3)
    with pytest.raises(LeptonError, match='torch.Tensor'): sigmoid([0.5])

def test_bench_contract():
    "What `lepton bench --json` prints: one flat JSON object with a ratio and the times for each measured pair."
    r = bench_conv('cpu', repeats=1, batch=4)
    json.dumps(r)
    for case in ('conv2d', 'conv2d_deep', 'conv2d_deep_cl', 'conv2d_unfold', 'maxpool', 'maxpool_cl'):
        assert r[f'{case}_fwd_bwd_ratio'] > 0 and r[f'{case}_fwd_bwd_ms'] > 0
    assert r['conv2d_torch_fwd_bwd_ms'] > 0 and r['device'] == 'cpu' and r['batch'] == 4
    with pytest.raises(LeptonError): bench_conv('cpu', repeats=0)
