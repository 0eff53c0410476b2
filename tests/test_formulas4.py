"""The SVM (03) where the closed-form tests of test_formulas2.py do not look: the wording of every error a learner
reads, the boundaries of what is accepted, the dtypes, and `LinearSVM.fit` against the subgradient steps worked out by
hand from a zero start (eq. svm-subgrad), its cosine step size and its per-epoch history."""
import math

import pytest
import torch

from lepton_nb.core import LeptonError
from lepton_nb.svm import LinearSVM, hinge_loss, multiclass_hinge_loss


def message(f, *args, **kw) -> str:
    with pytest.raises(LeptonError) as e: f(*args, **kw)
    return str(e.value)


def test_binary_hinge_errors_name_what_they_got():
    y = torch.tensor([1., -1.])
    assert message(hinge_loss, [0.5, 1.], y) == 'scores must be a floating-point tensor, got list'
    assert message(hinge_loss, torch.tensor([1, 2]), y) == ('scores must be a floating-point tensor, got torch.int64 '
                                                           'of shape (2,)')
    assert message(hinge_loss, torch.zeros(2), (1, -1)) == 'labels must be a tensor of -1 and +1, got tuple'
    assert message(hinge_loss, torch.zeros(2, 1), y) == ('scores and labels must have the same shape, got (2, 1) '
                                                        'and (2,)')
    assert message(hinge_loss, torch.zeros(3), torch.tensor([1., -1., 0.])) == ('labels must be -1 or +1, found 0 '
                                                                               '(for 0/1 labels pass 2*y - 1)')
    assert message(hinge_loss, torch.zeros(2), torch.tensor([2.5, 1.])) == ('labels must be -1 or +1, found 2.5 '
                                                                           '(for 0/1 labels pass 2*y - 1)')
    assert message(hinge_loss, torch.zeros(2), y, 'avg') == "unknown reduction 'avg': use 'mean', 'sum' or 'none'"


def test_binary_hinge_takes_labels_of_any_real_dtype_and_keeps_the_scores_dtype():
    s = torch.tensor([0.5, -2., 3.])
    for y in (torch.tensor([1, -1, -1]), torch.tensor([1., -1., -1.], dtype=torch.float64)):
        l = hinge_loss(s, y, 'none')
        assert l.dtype == torch.float32 and l.tolist() == [0.5, 0., 4.]
    assert hinge_loss(s, torch.tensor([1, -1, -1])).item() == pytest.approx(4.5 / 3)
    assert hinge_loss(s, torch.tensor([1, -1, -1]), 'sum').item() == pytest.approx(4.5)


def test_multiclass_errors_name_what_they_got():
    y = torch.tensor([0, 1])
    assert message(multiclass_hinge_loss, torch.zeros(2), y) == ('scores must be a floating-point N x K tensor, got '
                                                                'torch.float32 of shape (2,)')
    assert message(multiclass_hinge_loss, torch.zeros(2, 3, dtype=torch.long), y).endswith('got torch.int64 of shape '
                                                                                          '(2, 3)')
    assert message(multiclass_hinge_loss, 'ab', y) == 'scores must be a floating-point N x K tensor, got str'
    assert message(multiclass_hinge_loss, torch.zeros(2, 1), y) == 'need at least 2 classes, scores have 1 column(s)'
    for bad, got in [(torch.tensor([0., 1.]), 'torch.float32 of shape (2,)'), ([0, 1], 'list'),
                     (torch.tensor([0, 1], dtype=torch.complex64), 'torch.complex64 of shape (2,)'),
                     (torch.tensor([True, False]), 'torch.bool of shape (2,)')]:
        assert message(multiclass_hinge_loss, torch.zeros(2, 3), bad) == ('labels must be an integer tensor of class '
                                                                         f'indices, got {got}')
    assert message(multiclass_hinge_loss, torch.zeros(2, 3), torch.tensor([0, 1, 2])) == (
        'labels must have shape (2,) to match scores (2, 3), got (3,)')
    assert message(multiclass_hinge_loss, torch.zeros(2, 3), torch.tensor([0, 3])) == (
        'labels must be class indices in 0..2, found 3')
    assert message(multiclass_hinge_loss, torch.zeros(2, 3), torch.tensor([-1, 3])) == (
        'labels must be class indices in 0..2, found -1')
    assert message(multiclass_hinge_loss, torch.zeros(2, 3), y, kind='WW') == (
        "unknown kind 'WW': use 'ww' (Weston-Watkins) or 'cs' (Crammer-Singer)")
    assert message(multiclass_hinge_loss, torch.zeros(2, 3), y, reduction='max') == (
        "unknown reduction 'max': use 'mean', 'sum' or 'none'")


def test_multiclass_accepts_the_edges():
    s = torch.tensor([[2., 0.], [0., 0.5]])
    y = torch.tensor([0, 1], dtype=torch.int32)                       # two classes, the last index, int32 labels
    assert multiclass_hinge_loss(s, y, reduction='none').tolist() == [0., 0.5]
    assert multiclass_hinge_loss(s, y).item() == 0.25                 # mean, Weston-Watkins, margin 1 by default
    assert multiclass_hinge_loss(s, y, 'cs', margin=3.).tolist() == 1.75
    empty = multiclass_hinge_loss(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), reduction='sum')
    assert empty.item() == 0.0


def test_linear_svm_construction_errors_and_shape():
    assert message(LinearSVM, 4, 1) == 'n_classes must be an integer >= 2, got 1'
    assert message(LinearSVM, 4, 3.0) == 'n_classes must be an integer >= 2, got 3.0'
    assert message(LinearSVM, 4, 3, kind='cs ') == "unknown kind 'cs ': use 'ww', 'cs' or 'ovr'"
    two, three = LinearSVM(4), LinearSVM(4, 3, kind='ovr', margin=2.)
    assert (two.n_features, two.n_classes, two.kind, two.margin, two.history) == (4, 2, 'ww', 1.0, [])
    assert (three.n_classes, three.kind, three.margin) == (3, 'ovr', 2.)
    assert two.linear.weight.shape == (1, 4) and three.linear.weight.shape == (3, 4)
    assert not two.linear.weight.any() and not two.linear.bias.any() and not three.linear.bias.any()
    x = torch.ones(5, 1, 2, 2)                                        # images are flattened
    assert two(x).shape == (5,) and three(x).shape == (5, 3)
    assert message(two, torch.ones(4)) == 'expected N samples of 4 features, got a tensor of shape (4,)'
    assert message(two, torch.ones(2, 5)) == 'expected N samples of 4 features, got a tensor of shape (2, 5)'


def test_linear_svm_loss_and_objective_per_kind():
    x, y = torch.tensor([[1., 0.], [0., 2.]]), torch.tensor([0, 2])
    for kind in ('ww', 'cs'):
        m = LinearSVM(2, 3, kind=kind, margin=0.5)
        with torch.no_grad(): m.linear.weight.copy_(torch.tensor([[1., 0.], [0., 1.], [2., -1.]]))
        s = m(x)
        want = multiclass_hinge_loss(s, y, kind, 0.5, 'none')
        assert torch.equal(m.loss(s, y, 'none'), want) and m.loss(s, y).item() == want.mean().item()
        assert m.objective(x, y, 0.2).item() == pytest.approx(want.mean().item() + 0.1 * 7)   # ||W||^2 = 7
    ovr = LinearSVM(2, 3, kind='ovr')
    s = torch.tensor([[0.5, -2., 0.], [1., 0., 3.]])
    # +1 for the true class, -1 elsewhere: per sample the sum of three binary hinges
    assert ovr.loss(s, y, 'none').tolist() == [0.5 + 0 + 1, 2 + 1 + 0] and ovr.loss(s, y, 'sum').item() == 4.5
    assert message(ovr.loss, s, y, 'avg').startswith("unknown reduction 'avg'")
    assert message(ovr.loss, s, torch.tensor([0, 3])) == 'labels must be class indices in 0..2, found 3'
    two = LinearSVM(2)
    assert two.loss(torch.tensor([0.5, 2.]), torch.tensor([1., -1.]), 'sum').item() == 3.5


def test_fit_errors_name_what_they_got():
    m, x = LinearSVM(4, 3), torch.zeros(5, 4)
    assert message(m.fit, torch.zeros(5, 4, dtype=torch.uint8), torch.zeros(5, dtype=torch.long)) == (
        'x must be a floating-point tensor (normalise images first), got torch.uint8 of shape (5, 4)')
    assert message(m.fit, x, torch.zeros(4, dtype=torch.long)) == (
        'need one label per sample: 5 samples, labels torch.int64 of shape (4,)')
    assert message(m.fit, x, [0] * 5) == 'need one label per sample: 5 samples, labels list'
    assert message(m.fit, x, torch.full((5,), 3)) == 'labels must be class indices in 0..2, found 3'
    assert message(LinearSVM(4).fit, x, torch.zeros(5)) == ('labels must be -1 or +1, found 0 '
                                                            '(for 0/1 labels pass 2*y - 1)')
    y = torch.zeros(5, dtype=torch.long)
    for kw, got in [({'epochs': 0}, '0 and 256'), ({'bs': 0}, '10 and 0'), ({'epochs': 1.0}, '1.0 and 256'),
                    ({'bs': 2.0}, '10 and 2.0')]:
        assert message(m.fit, x, y, **kw) == f'epochs and bs must be positive integers, got {got}'


def test_fit_with_one_full_batch_takes_the_hand_computed_steps():
    # from W = 0, b = 0 every margin is violated: the subgradient of the mean hinge is -mean(y x) and -mean(y)
    x = torch.tensor([[1., 2.], [-1., 0.5], [2., -1.], [0., 1.]], dtype=torch.float64)
    y = torch.tensor([1., -1., 1., -1.], dtype=torch.float64)
    lr, lam, mom = 0.05, 0.1, 0.9
    m = LinearSVM(2).double().fit(x, y, epochs=2, bs=4, lr=lr, lam=lam, momentum=mom, device='cpu')
    g1w, g1b = -(y[:, None] * x).mean(0), -y.mean()
    w1, b1 = -lr * g1w, -lr * g1b                                     # step 1 at the peak step size
    assert (x @ w1 + b1).abs().max() < 1                              # still every margin violated at step 2
    g2w, g2b = g1w + lam * w1, g1b
    lr2 = lr * 0.5 * (1 + math.cos(math.pi / 2))                      # the cosine halfway through two steps
    torch.testing.assert_close(m.linear.weight[0], w1 - lr2 * (mom * g1w + g2w))
    torch.testing.assert_close(m.linear.bias[0], b1 - lr2 * (mom * g1b + g2b))
    hinge1 = (1 - y * (x @ w1 + b1)).clamp_min(0).mean() + lam / 2 * w1.pow(2).sum()
    assert m.history == pytest.approx([1.0, hinge1.item()])           # epoch 1 starts from zero: hinge 1


def test_fit_history_averages_uneven_batches():
    x, y = torch.arange(15.).reshape(5, 3) / 10 - 0.7, torch.tensor([0, 1, 2, 1, 0])
    m = LinearSVM(3, 3).fit(x, y, epochs=3, bs=2, lr=0.0, device='cpu')    # no step: every batch's objective is 2
    assert m.history == [2.0, 2.0, 2.0]
    a = LinearSVM(3, 3).fit(x, y, epochs=2, bs=2, device='cpu', seed=1)
    b = LinearSVM(3, 3).fit(x, y, epochs=2, bs=2, device='cpu', seed=2)
    assert not torch.equal(a.linear.weight, b.linear.weight)          # the seed orders the batches


def test_fit_momentum_and_default_step_size_are_used():
    x, y = torch.tensor([[1., 0.], [0., 1.]]), torch.tensor([1., -1.])
    base = LinearSVM(2).fit(x, y, epochs=1, bs=1, lam=0.0, momentum=0.0, device='cpu', seed=0)
    heavy = LinearSVM(2).fit(x, y, epochs=1, bs=1, lam=0.0, momentum=0.9, device='cpu', seed=0)
    assert not torch.equal(base.linear.weight, heavy.linear.weight)
    one = LinearSVM(2).fit(x, y, epochs=1, bs=2, device='cpu')
    torch.testing.assert_close(one.linear.weight[0], 0.01 * (y[:, None] * x).mean(0))   # lr 0.01 by default


def test_fit_defaults_are_the_documented_ones():
    x = torch.linspace(-1, 1, 257 * 2).reshape(257, 2)
    y = torch.where(x[:, 0] > x[:, 1] ** 2 - 0.3, 1., -1.)
    got = LinearSVM(2).fit(x, y, device='cpu')
    want = LinearSVM(2).fit(x, y, epochs=10, bs=256, lr=0.01, lam=1e-3, momentum=0.9, seed=0, device='cpu')
    assert len(got.history) == 10 and got.history == want.history
    assert torch.equal(got.linear.weight, want.linear.weight) and torch.equal(got.linear.bias, want.linear.bias)
    assert got.history != LinearSVM(2).fit(x, y, bs=257, device='cpu').history


def test_predict_signs_and_classes():
    two = LinearSVM(2)
    x = torch.tensor([[1., 0.], [-1., 0.], [0., 0.]])
    assert two.predict(x).tolist() == [1, 1, 1]                       # a score of exactly 0 counts as +1
    with torch.no_grad(): two.linear.weight.copy_(torch.tensor([[2., 0.]]))
    assert two.predict(x).tolist() == [1, -1, 1] and not two.predict(x).is_floating_point()
    three = LinearSVM(2, 3)
    with torch.no_grad(): three.linear.weight.copy_(torch.tensor([[1., 0.], [0., 1.], [-1., 0.]]))
    assert three.predict(torch.tensor([[2., 1.], [0., 3.], [-2., 1.]])).tolist() == [0, 1, 2]


def test_fit_step_sizes_follow_one_cosine_over_all_epochs(monkeypatch):
    """The step size of every step, read from SGD as it steps: lr (1 + cos(pi t / T)) / 2 for t = 0 .. T-1,
    T = epochs x batches."""
    seen, step = [], torch.optim.SGD.step
    def spy(self, *a, **kw):
        seen.append(self.param_groups[0]['lr'])
        return step(self, *a, **kw)
    monkeypatch.setattr(torch.optim.SGD, 'step', spy)
    x, y = torch.randn(10, 3), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    LinearSVM(3, 3).fit(x, y, epochs=3, bs=4, lr=0.5, device='cpu')          # 3 batches an epoch: T = 9
    assert seen == pytest.approx([0.5 * 0.5 * (1 + math.cos(math.pi * t / 9)) for t in range(9)])


def test_one_vs_rest_loss_when_the_last_class_is_absent():
    "The +1/-1 targets have one column per class of the model, whichever classes the batch holds."
    m = LinearSVM(2, 3, kind='ovr')
    s, y = torch.tensor([[0.5, -2., 0.3], [-1., 0.2, 2.]]), torch.tensor([0, 1])
    y_pm = torch.tensor([[1., -1., -1.], [-1., 1., -1.]])
    torch.testing.assert_close(m.loss(s, y), (1 - y_pm * s).clamp_min(0).sum(1).mean())
