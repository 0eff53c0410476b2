"""The CUDA lane: the same code paths as the CPU tests, on a GPU. Skipped cleanly where no CUDA device exists;
`scripts/gpu_check.sh` runs them on a GPU machine. CPU twins: test_train_cli.py, the inline tests of 05/07/08."""
import pytest
import torch

import lepton_nb.data as D
from lepton_nb.core import get_device, to_device, Timer
from lepton_nb.learner import bf16_supported

cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                          reason='needs a CUDA GPU (the CPU twins cover this path on a CPU)')

@cuda
def test_device_choice_and_batches():
    assert get_device('auto').type == 'cuda'
    b = to_device({'x': torch.ones(3), 'y': [torch.zeros(2)]}, 'cuda')
    assert b['x'].is_cuda and b['y'][0].is_cuda

@cuda
def test_tensor_loader_keeps_data_on_the_gpu():
    fm = D.load_fashion_mnist()
    dl = D.TensorLoader(fm.x_train, fm.y_train, 512, shuffle=True, device='cuda', mean=fm.mean, std=fm.std,
                        channels_last=True)
    assert dl.x.is_cuda and dl.x.dtype == torch.uint8           # one uint8 copy, resident on the device
    xb, yb = next(iter(dl))
    assert xb.is_cuda and xb.is_contiguous(memory_format=torch.channels_last) and yb.is_cuda

@cuda
def test_fast_recipe_trains_on_gpu_in_native_precision():
    "bf16 where the GPU runs it natively (compute capability 8.0+), else fp16 with a gradient scaler (T4, V100)."
    from lepton_nb.cnn import train_classifier
    native = bf16_supported('cuda')
    fm = D.load_fashion_mnist()
    small = D.ImageData(fm.x_train[:12000], fm.y_train[:12000], fm.x_valid, fm.y_valid, fm.classes,
                        mean=fm.mean, std=fm.std)
    learn, m = train_classifier(small, 'fast', epochs=2, device='cuda', progress=False)
    assert next(learn.model.parameters()).is_cuda and m['device'].startswith('cuda')
    mp = [cb for cb in learn.cbs if type(cb).__name__ == 'MixedPrecisionCB']
    assert mp and mp[0].enabled and learn.precision == ('bf16' if native else 'fp16')
    assert learn.autocast.keywords == {'device_type': 'cuda', 'dtype': torch.bfloat16 if native else torch.float16}
    assert m['test_accuracy'] > 0.8

@cuda
def test_a_short_budget_keeps_the_full_width_on_the_gpu(tmp_path):
    """The CPU's trade-off for budgets under 300 s (width 16: more epochs) is not made on CUDA, where a step costs about
    the same at either width (notebook 10, "On a GPU"). CPU twin: test_train_cli.py (width 16) and 10's `_recipe`
    tests."""
    import json
    from helpers import lepton_here
    r = lepton_here('train', '--device', 'cuda', '--time-budget', '2', '--out', tmp_path/'run')
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path/'run'/'train_args.json').read_text())['width'] == 32
    assert json.loads((tmp_path/'run'/'metrics.json').read_text())['recipe']['width'] == 32

@cuda
def test_scratch_layers_match_torch_on_gpu():
    from lepton_nb import conv, activations
    import torch.nn.functional as F
    x = torch.randn(8, 3, 17, 19, device='cuda', dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, 3, 3, device='cuda', dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(conv.conv2d(x, w, padding=1), F.conv2d(x, w, padding=1))
    torch.testing.assert_close(conv.max_pool2d(x, 2), F.max_pool2d(x, 2))
    y = conv.max_pool2d(x, 3, 2, 1)                        # the general path (overlapping, padded windows)
    torch.testing.assert_close(y, F.max_pool2d(x, 3, 2, 1))
    gy = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, x, gy)[0],
                               torch.autograd.grad(F.max_pool2d(x, 3, 2, 1), x, gy)[0])
    torch.testing.assert_close(activations.sigmoid(x), torch.sigmoid(x))

@cuda
def test_timer_waits_for_the_gpu():
    "Timer('cuda') waits for the queued kernels: it measures at least what the GPU's own events measure."
    a = torch.randn(8192, 8192, device='cuda'); torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with Timer('cuda') as t:
        start.record()
        for _ in range(10): _ = a @ a          # about a second of work queued; the Python side returns at once
        end.record()
    torch.cuda.synchronize()
    assert t.elapsed >= 0.9 * start.elapsed_time(end) / 1e3 > 0

@cuda
def test_linear_svm_on_cuda_matches_cpu():
    "Notebook 03's LinearSVM on the GPU: the weights of the CPU run (test_formulas2.py is the CPU twin)."
    from lepton_nb.svm import LinearSVM
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(512, 10, generator=g), torch.randint(0, 4, (512,), generator=g)
    cpu = LinearSVM(10, 4).fit(x, y, epochs=3, device='cpu')
    gpu = LinearSVM(10, 4).fit(x, y, epochs=3, device='cuda')
    assert gpu.linear.weight.device.type == 'cuda' and gpu.predict(x).device == x.device
    torch.testing.assert_close(gpu.linear.weight.cpu(), cpu.linear.weight, atol=1e-4, rtol=1e-4)

@cuda
def test_ddp_on_one_gpu_with_nccl(tmp_path):
    "init_ddp's CUDA branch: torchrun with one process, nccl, on cuda:0 (test_distributed.py runs gloo on the CPU)."
    import json, subprocess, sys
    from lepton_nb.cnn import export_image_folder
    fm, folder = D.load_fashion_mnist(), tmp_path
    export_image_folder(fm, folder/'train', ['Trouser', 'Bag'], 100)
    export_image_folder(fm, folder/'val', ['Trouser', 'Bag'], 20, split='valid')
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=1', '-m',
                        'lepton_nb.cli', 'train', '--ddp', '--device', 'cuda', '--data', str(folder/'train'), '--val',
                        str(folder/'val'), '--model', 'seed', '--epochs', '1', '--out', str(tmp_path/'run'), '--json'],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ddp = json.loads((tmp_path/'run'/'metrics.json').read_text())['ddp']
    assert ddp['backend'] == 'nccl' and ddp['world_size'] == 1
