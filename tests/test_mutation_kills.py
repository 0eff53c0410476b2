"""Tests that kill the mutants of the formula modules that survived the notebooks' tests and tests/test_formulas*.py
(benchmarks/mutation.md lists them): the exact wording of the errors a learner reads, which names the argument at
fault and the type it got."""
import pytest
import torch

from lepton_nb.activations import ReLU, ReLUFunction, relu, sigmoid, tanh
from lepton_nb.core import LeptonError
from lepton_nb.gan_losses import d_loss, d_loss_hinge, d_loss_lsgan, g_loss, g_loss_hinge, g_loss_lsgan

GEN = [g_loss, g_loss_lsgan, g_loss_hinge]
PAIR = [d_loss, d_loss_lsgan, d_loss_hinge]


@pytest.mark.parametrize('f', GEN)
def test_generator_losses_name_the_argument_and_its_dtype(f):
    with pytest.raises(LeptonError) as e: f(torch.tensor([1, 2]))
    assert str(e.value) == 'fake_logits must be a floating-point tensor of discriminator logits, got torch.int64'
    with pytest.raises(LeptonError) as e: f([0.5])
    assert str(e.value) == 'fake_logits must be a floating-point tensor of discriminator logits, got list'
    with pytest.raises(LeptonError) as e: f(torch.zeros(0))
    assert str(e.value) == 'fake_logits is empty: a GAN loss needs at least one logit'


@pytest.mark.parametrize('f', PAIR)
def test_discriminator_losses_name_the_argument_at_fault(f):
    ok = torch.zeros(2, 1)
    with pytest.raises(LeptonError) as e: f(torch.ones(2, 1, dtype=torch.int32), ok)
    assert str(e.value) == 'real_logits must be a floating-point tensor of discriminator logits, got torch.int32'
    with pytest.raises(LeptonError) as e: f(ok, (1.0,))
    assert str(e.value) == 'fake_logits must be a floating-point tensor of discriminator logits, got tuple'
    with pytest.raises(LeptonError) as e: f(ok, torch.zeros(3, 2))
    assert str(e.value) == 'real and fake logits must have the same shape per sample, got (2, 1) and (3, 2)'


def message(f, *args) -> str:
    with pytest.raises(LeptonError) as e: f(*args)
    return str(e.value)


def test_relu_inplace_overwrites_only_when_asked():
    x = torch.tensor([-1., 2.])
    y = relu(x)
    assert x.tolist() == [-1., 2.] and y.tolist() == [0., 2.]
    y = ReLUFunction.apply(x)                                      # the Function's default: not in place
    assert x.tolist() == [-1., 2.] and y.tolist() == [0., 2.]
    y = relu(x, inplace=True)
    assert x.tolist() == [0., 2.] and y.data_ptr() == x.data_ptr()
    x = torch.tensor([-3., 4.])
    assert ReLU()(x).tolist() == [0., 4.] and x.tolist() == [-3., 4.] and ReLU().extra_repr() == ''
    assert ReLU(inplace=True)(x).tolist() == [0., 4.] and x.tolist() == [0., 4.]
    assert ReLU(inplace=True).extra_repr() == 'inplace=True'


def test_activation_errors_name_the_function_and_what_it_got():
    assert message(relu, [1.]) == 'relu expects a torch.Tensor, got list'
    c64 = torch.ones(2, dtype=torch.complex64)
    assert message(relu, c64) == 'relu is defined for real numbers, got torch.complex64'
    assert message(relu, torch.ones(2, dtype=torch.bool)) == 'relu is defined for real numbers, got torch.bool'
    assert message(sigmoid, 1.0) == 'sigmoid expects a torch.Tensor, got float'
    assert message(sigmoid, c64) == 'sigmoid is defined for real tensors, got torch.complex64'
    assert message(tanh, (1,)) == 'tanh expects a torch.Tensor, got tuple'


@pytest.mark.parametrize('f', [sigmoid, tanh])
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16, torch.float64])
def test_gradient_keeps_the_input_dtype(f, dtype):
    x = torch.linspace(-3, 3, 7, dtype=dtype, requires_grad=True)
    f(x).sum().backward()
    assert x.grad.dtype == dtype


@pytest.mark.parametrize('f,want', [(sigmoid, [0.5, 0.7310585737]), (tanh, [0.0, 0.7615941763])])
def test_integer_input_is_promoted_to_the_default_float(f, want):
    y = f(torch.tensor([0, 1]))
    assert y.dtype == torch.get_default_dtype()
    torch.testing.assert_close(y, torch.tensor(want))
