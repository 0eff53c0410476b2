"""Metrics (06) on inputs the notebook does not try: the confusion matrix and every figure derived from it against
a plain Python count and scikit-learn, the edge cases (empty batches, classes absent or never predicted), the report's
layout, and what the plots show a reader: panels, titles, labels, the pixels and the colour scale."""
import random

import matplotlib
matplotlib.use('Agg', force=True)
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_fscore_support

from lepton_nb.core import LeptonError
from lepton_nb.metrics import (Confusion, classification_report, confusion_matrix, macro_over_present,
                               metrics_from_confusion, plot_confusion, plot_mistakes, show_images, worst_mistakes)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close('all')


def count(targets:list, preds:list, k:int) -> list:
    "The confusion matrix by hand: one step per example."
    c = [[0] * k for _ in range(k)]
    for t, p in zip(targets, preds): c[t][p] += 1
    return c


@pytest.mark.parametrize('seed', range(4))
def test_confusion_matrix_counts_each_pair(seed):
    rng = random.Random(seed)
    k = rng.randint(2, 7); n = rng.randint(1, 40)
    t = [rng.randrange(k) for _ in range(n)]; p = [rng.randrange(k) for _ in range(n)]
    t[0], p[0], t[-1], p[-1] = 0, k - 1, k - 1, 0          # both ends of the index range occur
    cm = confusion_matrix(torch.tensor(p), torch.tensor(t), k)
    assert cm.dtype == torch.long and cm.tolist() == count(t, p, k)
    assert confusion_matrix(torch.tensor(p), torch.tensor(t).reshape(1, -1), k).tolist() == count(t, p, k)


def test_one_example_as_a_scalar():
    assert confusion_matrix(torch.tensor(1), torch.tensor(0), 2).tolist() == [[0, 1], [0, 0]]


def test_scores_count_as_their_argmax_over_classes():
    scores = torch.tensor([[.1, .9], [.8, .2], [.3, .7]])       # three examples, two classes
    assert confusion_matrix(scores, torch.tensor([1, 0, 0]), 2).tolist() == [[1, 1], [0, 1]]


def test_empty_batch_is_all_zero_counts():
    e = torch.tensor([], dtype=torch.long)
    assert confusion_matrix(e, e, 3).tolist() == [[0] * 3] * 3


def test_confusion_matrix_errors_say_what_is_wrong():
    with pytest.raises(LeptonError, match=r'^preds must be class indices \(N,\) or scores \(N, K\), got floating-point '
                       r'values of shape \(2,\); for one probability per example, threshold it first: '
                       r'\(p > 0\.5\)\.long\(\)$'):
        confusion_matrix(torch.tensor([.9, .2]), torch.tensor([1, 0]), 2)
    with pytest.raises(LeptonError, match=r'^3 predictions but 2 targets$'):
        confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([1, 0]), 2)
    for p, t in [([0, 3], [0, 1]), ([0, 1], [3, 0]), ([-1, 0], [0, 0]), ([0, 0], [0, -1])]:
        with pytest.raises(LeptonError, match=r'^class indices must be in 0\.\.2$'):
            confusion_matrix(torch.tensor(p), torch.tensor(t), 3)


@pytest.mark.parametrize('seed', range(4))
def test_metrics_agree_with_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(3, 8)); n = int(rng.integers(5, 60))
    t = rng.integers(0, k - 1, n); p = rng.integers(1, k, n)     # class k-1 never true, class 0 never predicted
    m = metrics_from_confusion(confusion_matrix(torch.from_numpy(p), torch.from_numpy(t), k))
    P, R, F, S = precision_recall_fscore_support(t, p, labels=range(k), zero_division=0)
    for key, want in [('precision', P), ('recall', R), ('f1', F)]:
        np.testing.assert_allclose(m[key], want, rtol=1e-12)
        np.testing.assert_allclose(m[f'{key}_macro'], want.mean(), rtol=1e-12)
    assert m['support'] == S.tolist() and all(type(s) is int for s in m['support'])
    assert m['n'] == n and type(m['n']) is int
    assert m['accuracy'] == pytest.approx((t == p).mean(), rel=1e-12)


def test_metrics_of_a_hand_counted_matrix():
    m = metrics_from_confusion(torch.tensor([[1, 0, 0], [0, 0, 0], [2, 1, 0]]))
    # class 0: 1 right of 3 predicted, 1 of 1 found; class 1: predicted once, never present; class 2: never predicted
    assert m['precision'] == pytest.approx([1 / 3, 0, 0]) and m['recall'] == pytest.approx([1, 0, 0])
    assert m['f1'] == pytest.approx([2 / 4, 0, 0]) and m['support'] == [1, 0, 3] and m['n'] == 4
    assert m['accuracy'] == pytest.approx(1 / 4)


def test_accuracy_of_one_example():
    assert metrics_from_confusion(torch.tensor([[0, 0], [0, 1]]))['accuracy'] == 1.0


def test_metrics_of_nothing_are_zero_not_nan():
    m = metrics_from_confusion(torch.zeros(2, 2, dtype=torch.long))
    assert m['accuracy'] == 0.0 and m['n'] == 0 and m['support'] == [0, 0]
    assert m['precision'] == m['recall'] == m['f1'] == [0.0, 0.0]
    assert m['precision_macro'] == m['recall_macro'] == m['f1_macro'] == 0.0


def test_confusion_accumulates_batches_and_resets():
    conf = Confusion(3)
    assert conf.n_classes == 3 and conf.cm.tolist() == [[0] * 3] * 3
    t, p = [0, 1, 2, 2, 1], [0, 2, 2, 1, 1]
    assert conf.update(torch.tensor(p[:2]), torch.tensor(t[:2])) is conf
    conf.update(torch.tensor(p[2:]), torch.tensor(t[2:]))
    r = conf.compute()
    assert r['confusion'] == count(t, p, 3) and all(type(v) is int for row in r['confusion'] for v in row)
    assert r['accuracy'] == pytest.approx(3 / 5) and r['n'] == 5
    conf.reset()
    assert conf.compute()['n'] == 0 and conf.cm.tolist() == [[0] * 3] * 3


def test_confusion_takes_scores_with_gradients_and_one_class():
    scores = torch.tensor([[2., 1.], [0., 3.]], requires_grad=True)
    assert Confusion(2).update(scores, torch.tensor([0, 0])).compute()['confusion'] == [[1, 1], [0, 0]]
    assert Confusion(1).update(torch.tensor([0, 0]), torch.tensor([0, 0])).compute()['accuracy'] == 1.0


@pytest.mark.parametrize('bad', [0, -2, 2.0, '3'])
def test_confusion_needs_a_positive_integer(bad):
    with pytest.raises(LeptonError, match=f'^n_classes must be a positive integer, got {bad}$'):
        Confusion(bad)


def test_macro_over_present_leaves_absent_classes_out():
    m = {'support': [2, 0, 1], 'f1': [.5, .9, .1], 'recall': [.2, .7, .6]}
    assert macro_over_present(m) == pytest.approx((.5 + .1) / 2)
    assert macro_over_present(m, 'recall') == pytest.approx((.2 + .6) / 2)
    assert macro_over_present({'support': [0, 0], 'f1': [0., 0.]}) is None


def report_rows(m:dict, classes:list) -> list:
    return [line.split() for line in classification_report(m, classes).splitlines()]


def test_report_lists_each_class_then_the_averages():
    t, p = [0, 0, 1, 1, 1], [0, 1, 1, 1, 0]
    m = Confusion(2).update(torch.tensor(p), torch.tensor(t)).compute()
    rep = classification_report(m, ['cat', 'dog'])
    lines = rep.splitlines()
    assert lines[0] == f"{'class':<12}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"
    for line, c in zip(lines[1:3], range(2)):
        assert line == (f"{['cat', 'dog'][c]:<12}{m['precision'][c]:>10.4f}{m['recall'][c]:>10.4f}{m['f1'][c]:>10.4f}"
                        f"{m['support'][c]:>10d}")
    assert lines[3] == (f"{'macro avg':<12}{m['precision_macro']:>10.4f}{m['recall_macro']:>10.4f}"
                        f"{m['f1_macro']:>10.4f}{5:>10d}")
    assert lines[4] == f"{'accuracy':<12}{'':>20}{m['accuracy']:>10.4f}{5:>10d}" and len(lines) == 5


def test_report_widens_for_long_names():
    m = metrics_from_confusion(torch.tensor([[1, 0], [0, 1]]))
    lines = classification_report(m, ['a very long class name', 7]).splitlines()
    assert lines[1].startswith('a very long class name  ' + f"{1:>10.4f}") and lines[2].startswith('7' + ' ' * 23)
    assert len({len(l) for l in lines}) == 1


def test_report_marks_ratios_without_a_denominator():
    # 'b' predicted once but never present: precision 0, recall n/a; 'c' present once, never predicted: all 0;
    # 'd' absent and never predicted: all n/a
    m = Confusion(4).update(torch.tensor([0, 1, 0, 0]), torch.tensor([0, 0, 0, 2])).compute()
    classes = ['a', 'b', 'c', 'd']
    rows = report_rows(m, classes)
    assert rows[2] == ['b', '0.0000', 'n/a', '0.0000', '0'] and rows[3] == ['c', '0.0000', '0.0000', '0.0000', '1']
    assert rows[4] == ['d', 'n/a', 'n/a', 'n/a', '0']
    lines = classification_report(m, classes).splitlines()
    assert {len(l) for l in lines} == {22 + 40}                # the first column fits 'macro avg, 2 present'
    assert lines[6].startswith('macro avg, 2 present  ') and lines[6].split()[4:] == [
        f"{macro_over_present(m, k):.4f}" for k in ('precision', 'recall', 'f1')] + ['4']
    # without the confusion matrix, every class counts as predicted: only recall needs examples
    plain = metrics_from_confusion(torch.tensor(m['confusion']))
    assert report_rows(plain, classes)[4] == ['d', '0.0000', 'n/a', '0.0000', '0']


def test_report_has_no_second_macro_line_when_all_or_none_are_present():
    full = metrics_from_confusion(torch.tensor([[1, 1], [0, 1]]))
    assert not any(r[0] == 'macro' and r[2] == '1' for r in report_rows(full, ['a', 'b']))
    assert len(report_rows(full, ['a', 'b'])) == 5
    assert len(report_rows(metrics_from_confusion(torch.zeros(2, 2)), ['a', 'b'])) == 5


def shown(ax) -> np.ndarray:
    return np.asarray(ax.get_images()[0].get_array())


def test_show_images_lays_out_a_grid_with_the_pixels_and_titles():
    x = torch.randint(0, 256, (5, 1, 4, 3), dtype=torch.uint8)
    fig = show_images(x, list('abcde'), ncols=3, size=2.0)
    axs = fig.axes
    assert len(axs) == 6 and [a.get_title() for a in axs] == list('abcde') + ['']
    assert tuple(fig.get_size_inches()) == pytest.approx((3 * 2.0, 2 * 2.0 * 1.25))
    assert axs[0].get_subplotspec().get_geometry()[:2] == (2, 3)
    for i in range(5):
        np.testing.assert_allclose(shown(axs[i]), x[i, 0].numpy() / 255, rtol=1e-6)
        im = axs[i].get_images()[0]
        assert im.get_clim() == (0, 1) and im.get_cmap().name == 'gray' and axs[i].title.get_fontsize() == 8
    assert not axs[5].get_images() and not any(a.axison for a in axs)


def test_show_images_clips_floats_and_shows_colour():
    x = torch.tensor([[[[-1., .5]], [[.25, 2.]], [[0., 1.]]]])           # one RGB image, 1 x 2 pixels
    fig = show_images(x, size=1.0)
    assert len(fig.axes) == 1 and fig.axes[0].get_title() == ''
    assert tuple(fig.get_size_inches()) == pytest.approx((1.0, 1.0))
    np.testing.assert_allclose(shown(fig.axes[0]), [[[0., .25, 0.], [.5, 1., 1.]]])


def test_show_images_fills_given_axes():
    _, axs = plt.subplots(1, 4)
    fig = show_images(torch.rand(2, 1, 3, 3), [1, 2], axs=axs)
    assert fig is axs[0].figure and [a.get_title() for a in axs] == ['1', '2', '', '']
    assert not any(a.axison for a in axs) and [len(a.get_images()) for a in axs] == [1, 1, 0, 0]


def test_show_images_default_grid_is_eight_wide():
    fig = show_images(torch.zeros(10, 1, 2, 2))
    assert len(fig.axes) == 16 and tuple(fig.get_size_inches()) == pytest.approx((8 * 1.3, 2 * 1.3))


def test_plot_confusion_shows_row_shares_with_names_and_values():
    cm = torch.tensor([[3, 1, 0], [0, 2, 2], [0, 0, 1]])
    fig = plot_confusion(cm, ['x', 'y', 'z'])
    ax = fig.axes[0]
    np.testing.assert_allclose(shown(ax), [[.75, .25, 0], [0, .5, .5], [0, 0, 1]])
    assert ax.get_images()[0].get_clim() == (0, 1) and ax.get_images()[0].get_cmap().name == 'Blues'
    names = [t.get_text() for t in ax.get_xticklabels()], [t.get_text() for t in ax.get_yticklabels()]
    assert names == (['x', 'y', 'z'], ['x', 'y', 'z'])
    assert list(ax.get_xticks()) == [0, 1, 2] and list(ax.get_yticks()) == [0, 1, 2]
    assert ax.get_xticklabels()[0].get_rotation() == 45 and ax.get_xticklabels()[0].get_ha() == 'right'
    assert ax.get_xlabel() == 'predicted' and ax.get_ylabel() == 'true'
    assert ax.get_title() == 'confusion matrix (rows sum to 1)'
    texts = {(t.get_position(), t.get_text(), t.get_color()) for t in ax.texts}
    assert texts == {((0, 0), '0.75', 'white'), ((1, 0), '0.25', 'black'), ((1, 1), '0.50', 'black'),
                     ((2, 1), '0.50', 'black'), ((2, 2), '1.00', 'white')}
    assert all(t.get_ha() == 'center' and t.get_va() == 'center' and t.get_fontsize() == 7 for t in ax.texts)
    assert {t.get_fontsize() for t in ax.get_xticklabels() + ax.get_yticklabels()} == {8}
    assert tuple(fig.get_size_inches()) == pytest.approx((4.4, 3.8))


def test_plot_confusion_counts_and_size_grow_with_classes():
    cm = [[5, 1], [2, 4]]
    ax = plot_confusion(cm, ['a', 'b'], normalize=False, title='counts').axes[0]
    np.testing.assert_allclose(shown(ax), cm)
    assert ax.get_images()[0].get_clim() == (0, 5) and ax.get_title() == 'counts'        # the scale starts at 0
    assert {(t.get_text(), t.get_color()) for t in ax.texts} == {('5', 'white'), ('1', 'black'), ('2', 'black'),
                                                               ('4', 'white')}
    assert plot_confusion(cm, ['a', 'b']).axes[0].get_images()[0].get_clim() == (0, 1)
    assert plot_confusion(cm, ['a', 'b'], normalize=False).axes[0].get_title() == 'confusion matrix'
    big = plot_confusion(torch.eye(10, dtype=torch.long), list('abcdefghij'))
    assert tuple(big.get_size_inches()) == pytest.approx((1.0 + 0.62 * 10, 0.8 + 0.55 * 10))
    _, ax = plt.subplots()
    assert plot_confusion(cm, ['a', 'b'], ax=ax) is ax.figure


def test_worst_mistakes_are_the_most_confident_wrong_ones():
    probs = torch.tensor([[.9, .1], [.2, .8], [.4, .6], [.99, .01], [.7, .3]])
    targets = torch.tensor([1, 1, 0, 1, 0])                  # wrong: 0 (0.9), 2 (0.6), 3 (0.99)
    assert worst_mistakes(probs, targets).tolist() == [3, 0, 2]
    assert worst_mistakes(probs, targets, k=2).tolist() == [3, 0]
    assert worst_mistakes(probs, torch.tensor([0, 1, 1, 0, 0])).tolist() == []
    many = torch.linspace(0.5, 0.99, 20)
    wrong = torch.stack([many, 1 - many], 1)                 # 20 mistakes, the last the most confident
    assert worst_mistakes(wrong, torch.ones(20, dtype=torch.long)).tolist() == list(range(19, 3, -1))


def test_plot_mistakes_titles_prediction_confidence_and_truth():
    x = torch.randint(0, 256, (4, 1, 2, 2), dtype=torch.uint8)
    probs = torch.tensor([[.9, .1], [.2, .8], [.35, .65], [.6, .4]])
    fig = plot_mistakes(x, probs, torch.tensor([1, 1, 0, 0]), ['cat', 'dog'], ncols=5)     # two mistakes
    assert [a.get_title() for a in fig.axes] == ['cat (0.90)\ntrue: dog', 'dog (0.65)\ntrue: cat']
    np.testing.assert_allclose(shown(fig.axes[1]), x[2, 0].numpy() / 255, rtol=1e-6)
    assert tuple(fig.get_size_inches()) == pytest.approx((2 * 1.5, 1.5 * 1.25))
    one = plot_mistakes(x, probs, torch.tensor([1, 1, 0, 0]), ['cat', 'dog'], k=1)
    assert [a.get_title() for a in one.axes] == ['cat (0.90)\ntrue: dog']
    none = plot_mistakes(x, probs, torch.tensor([0, 1, 1, 0]), ['cat', 'dog'])
    assert len(none.axes) == 1 and not none.axes[0].get_images()
    narrow = plot_mistakes(x, probs, torch.tensor([1, 0, 0, 1]), ['cat', 'dog'], ncols=2)     # three mistakes
    assert len(narrow.axes) == 4 and narrow.axes[0].get_subplotspec().get_geometry()[:2] == (2, 2)


def test_plot_mistakes_shows_sixteen_eight_wide_by_default():
    many = torch.linspace(0.5, 0.99, 20)
    fig = plot_mistakes(torch.zeros(20, 1, 2, 2), torch.stack([many, 1 - many], 1), torch.ones(20, dtype=torch.long),
                        ['a', 'b'])
    assert len(fig.axes) == 16 and fig.axes[0].get_subplotspec().get_geometry()[:2] == (2, 8)
    assert fig.axes[0].get_title() == f'a ({many[19]:.2f})\ntrue: b'


def test_report_macro_line_over_the_one_class_present():
    "Only class 'a' has examples: the second macro line averages it alone, each column its own figure."
    m = metrics_from_confusion(torch.tensor([[2, 1, 0], [0, 0, 0], [0, 0, 0]]))
    line = next(ln for ln in classification_report(m, ['a', 'b', 'c']).splitlines() if ln.startswith('macro avg, 1'))
    assert line.split()[4:] == ['1.0000', '0.6667', '0.8000', '3']   # precision 2/2, recall 2/3, F1 0.8, support


def test_confusion_cell_text_white_over_half_a_row():
    "Normalised, a cell's text is white above 0.5 of its row (dark blue), whatever the largest share is."
    fig = plot_confusion(torch.tensor([[6, 4], [4, 6]]), ['a', 'b'])
    colours = {t.get_text(): matplotlib.colors.to_hex(t.get_color()) for t in fig.axes[0].texts}
    assert colours == {'0.60': '#ffffff', '0.40': '#000000'}
