"""Hinge losses, LinearSVM and GAN losses on inputs nobody chose: random shapes, values, margins and dtypes, drawn from
a fresh seed each run (set LEPTON_TEST_SEED to replay one), checked against closed forms written in NumPy."""
import os, random
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lepton_nb.core import LeptonError
from lepton_nb.svm import hinge_loss, multiclass_hinge_loss, LinearSVM
from lepton_nb.gan_losses import d_loss, g_loss, d_loss_lsgan, g_loss_lsgan, d_loss_hinge, g_loss_hinge

SEED = int(os.environ.get('LEPTON_TEST_SEED', random.SystemRandom().randrange(2**31)))
MSG = f"(replay with LEPTON_TEST_SEED={SEED})"

@pytest.fixture
def rng():
    return np.random.default_rng(SEED)

def _reduce_np(l, reduction):
    return {'mean': l.mean(), 'sum': l.sum(), 'none': l}[reduction]

def _close(got, want, tol=1e-10):
    np.testing.assert_allclose(np.asarray(got.detach().cpu().double()), np.asarray(want, dtype=np.float64),
                               rtol=tol, atol=tol, err_msg=MSG)

@pytest.mark.parametrize('trial', range(20))
def test_hinge_closed_form(rng, trial):
    shape = tuple(rng.integers(1, 6, size=rng.integers(1, 4)))
    s = rng.normal(scale=rng.uniform(0.1, 10), size=shape)
    y = rng.choice([-1.0, 1.0], size=shape)
    for reduction in ('mean', 'sum', 'none'):
        got = hinge_loss(torch.from_numpy(s), torch.from_numpy(y), reduction)
        assert got.shape == (shape if reduction == 'none' else ()), MSG
        _close(got, _reduce_np(np.maximum(0, 1 - y * s), reduction))

@pytest.mark.parametrize('trial', range(20))
def test_multiclass_closed_form(rng, trial):
    n, c = int(rng.integers(1, 50)), int(rng.integers(2, 12))
    margin = float(rng.uniform(0, 3))
    s = rng.normal(scale=rng.uniform(0.1, 5), size=(n, c)); y = rng.integers(0, c, size=n)
    viol = margin - s[np.arange(n), y][:, None] + s          # n x c
    viol[np.arange(n), y] = -np.inf                           # j == y left out
    ww, cs = np.maximum(0, viol).sum(1), np.maximum(0, viol.max(1))
    for reduction in ('mean', 'sum', 'none'):
        st, yt = torch.from_numpy(s), torch.from_numpy(y)
        _close(multiclass_hinge_loss(st, yt, 'ww', margin, reduction), _reduce_np(ww, reduction))
        _close(multiclass_hinge_loss(st, yt, 'cs', margin, reduction), _reduce_np(cs, reduction))
        _close(multiclass_hinge_loss(st, yt, 'ww', margin, reduction) / c,
               F.multi_margin_loss(st, yt, margin=margin, reduction=reduction).numpy())

def _softplus_np(x): return np.logaddexp(0, x)

@pytest.mark.parametrize('trial', range(20))
def test_gan_losses_closed_form(rng, trial):
    n, m, k = int(rng.integers(1, 40)), int(rng.integers(1, 40)), int(rng.integers(1, 3))
    r = rng.normal(scale=rng.uniform(0.1, 30), size=(n, k)); f = rng.normal(scale=rng.uniform(0.1, 30), size=(m, k))
    r[rng.random(r.shape) < 0.1] = 1e4 * rng.choice([-1, 1]); f[rng.random(f.shape) < 0.1] = 1e4 * rng.choice([-1, 1])
    rt, ft = torch.from_numpy(r).requires_grad_(), torch.from_numpy(f).requires_grad_()
    # torch's softplus returns x itself above x = 20 (its overflow guard), so value and slope there are off by at most
    # e^-20 = 2e-9 relative: the tolerance of these checks is 1e-8, not 1e-10
    close = partial(_close, tol=1e-8)
    ld = d_loss(rt, ft); ld.backward()
    close(ld, _softplus_np(-r).mean() + _softplus_np(f).mean())
    sig = lambda x: np.exp(-np.logaddexp(0, -x))          # 1 / (1 + e^-x), accurate for any x
    close(rt.grad, -sig(-r) / r.size); close(ft.grad, sig(f) / f.size)
    for sat, want, grad in ((False, _softplus_np(-f).mean(), -sig(-f) / f.size),
                            (True, -_softplus_np(f).mean(), -sig(f) / f.size)):
        ft = torch.from_numpy(f).requires_grad_()
        lg = g_loss(ft, saturating=sat); lg.backward()
        close(lg, want); close(ft.grad, grad)
        assert torch.isfinite(ft.grad).all(), MSG
    rt, ft = torch.from_numpy(r), torch.from_numpy(f)
    _close(d_loss_lsgan(rt, ft), 0.5 * ((r - 1)**2).mean() + 0.5 * (f**2).mean())
    _close(g_loss_lsgan(ft), 0.5 * ((f - 1)**2).mean())
    _close(d_loss_hinge(rt, ft), np.maximum(0, 1 - r).mean() + np.maximum(0, 1 + f).mean())
    _close(g_loss_hinge(ft), -f.mean())

BAD = [
    (lambda: hinge_loss(torch.randn(3), torch.tensor([0., 1., 1.])), 'labels must be -1 or +1'),
    (lambda: hinge_loss(torch.randn(3, 1), torch.ones(3)), 'same shape'),
    (lambda: hinge_loss(torch.randn(3), torch.ones(3), 'max'), 'unknown reduction'),
    (lambda: multiclass_hinge_loss(torch.randn(3, 4), torch.tensor([0, 4, 1])), 'class indices in 0..3'),
    (lambda: multiclass_hinge_loss(torch.randn(3, 4), torch.tensor([0, 1, 1]), kind='wW'), 'unknown kind'),
    (lambda: multiclass_hinge_loss(torch.randn(3, 4), torch.tensor([[0], [1], [1]])), 'shape (3,)'),
    (lambda: LinearSVM(4, 1), 'n_classes'),
    (lambda: LinearSVM(4, 3, kind='crammer'), 'unknown kind'),
    (lambda: LinearSVM(4, 3).fit(torch.zeros(5, 4, dtype=torch.uint8), torch.zeros(5, dtype=torch.long)),
     'normalise images first'),
    (lambda: LinearSVM(4, 3).fit(torch.zeros(5, 4), torch.zeros(4, dtype=torch.long)), 'one label per sample'),
    (lambda: LinearSVM(4, 3).fit(torch.zeros(5, 4), torch.full((5,), 3)), 'class indices in 0..2'),
    (lambda: LinearSVM(4).fit(torch.zeros(5, 4), torch.zeros(5)), 'labels must be -1 or +1'),
    (lambda: LinearSVM(4, 3).fit(torch.zeros(5, 4), torch.zeros(5, dtype=torch.long), epochs=0), 'positive integers'),
    (lambda: LinearSVM(4, 3)(torch.zeros(5, 5)), 'samples of 4 features'),
    (lambda: LinearSVM(4, 3).fit(torch.zeros(5, 4), torch.zeros(5, dtype=torch.long), device='tpu'), 'device'),
    (lambda: d_loss(torch.randn(2, 1), torch.randn(2, 3)), 'same shape per sample'),
    (lambda: d_loss(torch.randn(0), torch.randn(2)), 'empty'),
    (lambda: g_loss(torch.tensor([1, 2])), 'floating-point'),
    (lambda: d_loss_hinge(torch.randn(2), torch.randn(2, 1)), 'same shape per sample'),
]

@pytest.mark.parametrize('i', range(len(BAD)))
def test_bad_input_one_line_error(i):
    fn, contains = BAD[i]
    with pytest.raises(LeptonError) as e: fn()
    msg = str(e.value)
    assert contains in msg and '\n' not in msg, msg

def test_linear_svm_ovr_is_sum_of_binary_hinges(rng):
    n, c = 40, 5
    x = torch.from_numpy(rng.normal(size=(n, 3))).float(); y = torch.from_numpy(rng.integers(0, c, n))
    m = LinearSVM(3, c, kind='ovr')
    torch.nn.init.normal_(m.linear.weight); torch.nn.init.normal_(m.linear.bias)
    s = m(x).detach().numpy()
    y_pm = np.where(np.arange(c)[None] == y.numpy()[:, None], 1.0, -1.0)
    _close(m.loss(m(x), y), np.maximum(0, 1 - y_pm * s).sum(1).mean(), tol=1e-5)

def test_linear_svm_deterministic_and_reloadable(tmp_path, rng):
    x = torch.from_numpy(rng.normal(size=(300, 6))).float()
    y = (x @ torch.from_numpy(rng.normal(size=(6, 3))).float()).argmax(1)   # 3 linearly separable classes
    a = LinearSVM(6, 3).fit(x, y, epochs=4, bs=32, lam=1e-2, device='cpu', seed=7)
    b = LinearSVM(6, 3).fit(x, y, epochs=4, bs=32, lam=1e-2, device='cpu', seed=7)
    assert torch.equal(a.linear.weight, b.linear.weight), MSG
    assert len(a.history) == 4 and a.history[-1] < a.history[0], (a.history, MSG)
    torch.save(a.state_dict(), tmp_path / 'svm.pt')
    c = LinearSVM(6, 3); c.load_state_dict(torch.load(tmp_path / 'svm.pt'))
    assert torch.equal(c.predict(x), a.predict(x))
    assert (a.predict(x) == y).float().mean() > 0.8, MSG
