"`lepton train --ddp` under torchrun: 2 CPU processes (gloo) against one process with the same global batch; resume."
import json, os, subprocess, sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import assert_one_line_error, last_json, lepton
import lepton_nb.data as D
from lepton_nb.artifacts import load_model
from lepton_nb.cnn import export_image_folder
from lepton_nb.distributed import weights_sha256

CLASSES = ['Trouser', 'Sneaker', 'Bag', 'Coat']
# Tolerance of DDP against one process: the two sum the same gradients in a different order (float rounding only).
# Nearly every weight then agrees to 1e-6. Adam divides each step by the gradient's running size, so on a weight
# whose gradient is near zero a rounding-sized change can move it by a fraction of one step (lr 1e-3): measured
# 2e-5 on one processor, 1.4e-4 on one weight of 692,224 on another. So: all but 1 in 10,000 weights to 1e-6, every
# weight within one step.
ATOL, BULK_ATOL, BULK_SHARE = 1e-3, 1e-6, 1e-4

def torchrun(*args, cwd, n=2, timeout=300):
    """`torchrun --standalone --nproc_per_node=n -m lepton_nb.cli ...` with torchrun's own thread default
    (1 per process).
    A rank that dies of a signal prints every thread's Python stack (faulthandler): a rank aborted once at teardown."""
    env = {k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'} | {'PYTHONFAULTHANDLER': '1'}
    return subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={n}',
                           '-m', 'lepton_nb.cli', *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=cwd)

@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    "train/ and val/ folders of real Fashion-MNIST PNGs: four classes, 150 training and 50 validation images each."
    root = tmp_path_factory.mktemp('ddp')
    fm = D.load_fashion_mnist(cache=False)
    export_image_folder(fm, root/'train', CLASSES, 150)
    export_image_folder(fm, root/'val', CLASSES, 50, split='valid')
    return root

def test_ddp_two_processes_match_one_and_resume(folder, cache, tmp_path):
    common = ['--data', folder/'train', '--val', folder/'val', '--model', 'seed', '--batch-size', '32']
    one = lepton('train', *common, '--epochs', '2', '--out', tmp_path/'one', '--json', env={'OMP_NUM_THREADS': '1'})
    assert one.returncode == 0, one.stderr
    r = torchrun('train', '--ddp', *common, '--epochs', '2', '--out', tmp_path/'two', '--json', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-6000:]
    m = last_json(r.stdout)                    # rank 0 alone prints: its JSON is standard output
    assert r.stderr.count('test accuracy') == 1   # (and its summary line, with the human lines, standard error)
    ddp = json.loads((tmp_path/'two'/'metrics.json').read_text())['ddp']
    assert ddp['world_size'] == 2 and ddp['backend'] == 'gloo' and ddp['batch_per_rank'] == 16
    assert ddp['threads_per_rank'] == 1        # torchrun's OMP_NUM_THREADS=1 for more than one process
    # both ranks end with identical weights: equal hashes, and no weight differs between the ranks at all
    h = ddp['weights_sha256_per_rank']
    assert len(h) == 2 and h[0] == h[1] and ddp['max_weight_difference_across_ranks'] == 0.0
    model, _ = load_model(tmp_path/'two', 'cpu')
    assert weights_sha256(model) == h[0]       # ... and the hashes describe the model rank 0 saved
    # the same steps as one process with the same global batch, up to float rounding
    w1, w2 = load_file(tmp_path/'one'/'model.safetensors'), load_file(tmp_path/'two'/'model.safetensors')
    assert w1.keys() == w2.keys()
    n = sum(w.numel() for w in w1.values())
    assert sum(int(((w1[k] - w2[k]).abs() > BULK_ATOL).sum()) for k in w1) <= BULK_SHARE * n
    for k in w1: torch.testing.assert_close(w2[k], w1[k], atol=ATOL, rtol=0)
    h1, h2 = last_json(one.stdout)['history'], m['history']
    assert len(h1) == len(h2) == 2
    for a, b in zip(h1, h2):
        assert abs(a['train_loss'] - b['train_loss']) < 1e-4 and abs(a['valid_loss'] - b['valid_loss']) < 1e-4
    # kill-free resume: 1 epoch, then --resume to 2 epochs, gives the 2-epoch run's weights exactly
    r = torchrun('train', '--ddp', *common, '--epochs', '1', '--out', tmp_path/'three', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-6000:]
    r = torchrun('train', '--ddp', '--resume', '--out', tmp_path/'three', '--epochs', '2', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-6000:]
    w3 = load_file(tmp_path/'three'/'model.safetensors')
    for k in w2: assert torch.equal(w3[k], w2[k]), k

def test_ddp_errors(folder, cache, tmp_path):
    r = lepton('train', '--ddp', '--data', folder/'train', '--epochs', '1')
    assert_one_line_error(r, 'runs under torchrun')
    r = torchrun('train', '--ddp', '--data', folder/'train', '--val', folder/'val', '--batch-size', '33',
                 '--epochs', '1', '--out', tmp_path/'odd', cwd=tmp_path)
    assert r.returncode != 0
    assert 'global batch size 33 is not divisible by 2 processes' in r.stderr
    assert not (tmp_path/'odd'/'model.safetensors').exists()

def test_ddp_on_a_set_smaller_than_the_batch(tmp_path):
    "15 training images and the seed recipe's batch of 32: the batch is cut to the 15, and the 2 ranks take 7 each."
    fm = D.load_fashion_mnist(cache=False)
    export_image_folder(fm, tmp_path/'train', CLASSES[:3], 5)
    export_image_folder(fm, tmp_path/'val', CLASSES[:3], 2, split='valid')
    r = torchrun('train', '--ddp', '--data', tmp_path/'train', '--val', tmp_path/'val', '--model', 'seed',
                 '--epochs', '1', '--out', tmp_path/'run', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-6000:]
    m = json.loads((tmp_path/'run'/'metrics.json').read_text())
    assert m['n_train'] == 15 and m['ddp']['batch_per_rank'] == 7 and len(set(m['ddp']['weights_sha256_per_rank'])) == 1


NAN_RUN = r"""
import datetime, sys, torch, torch.nn as nn, torch.distributed as dist
from lepton_nb.learner import Learner
from lepton_nb.resilience import NonFiniteGuardCB, CheckpointCB
from lepton_nb.distributed import DDPCB
from lepton_nb.data import TensorLoader
dist.init_process_group('gloo', timeout=datetime.timedelta(seconds=60))
rank = dist.get_rank()
torch.manual_seed(0)
dl = TensorLoader(torch.randint(0, 255, (400, 1, 4, 4), dtype=torch.uint8), torch.randint(0, 2, (400,)), 10,
                  device='cpu')
class M(nn.Module):                                  # its loss turns nan at the third training step
    def __init__(s): super().__init__(); s.l = nn.Linear(16, 2); s.n = 0
    def forward(s, x):
        s.n += s.training
        o = s.l(x.flatten(1))
        return o * float('nan') if s.n == 3 and s.training else o
cbs = [NonFiniteGuardCB(every=25), DDPCB()] + ([CheckpointCB(sys.argv[1], every_seconds=0)] if rank == 0 else [])
learn = Learner(M(), dl, lr=1e-3, device='cpu', cbs=cbs)
try: learn.fit(2); res = 'finished'
except Exception as e: res = f"{type(e).__name__} at step {learn.step}: {str(e)[:200]}"
open(f"{sys.argv[1]}.rank{rank}", 'w').write(res)   # one file per rank: their prints would interleave
dist.barrier(); dist.destroy_process_group()
"""

def test_ddp_non_finite_loss_stops_every_rank_together(tmp_path):
    "A nan loss on a GPU-like schedule (the guard reads its flag every 25 steps) with rank 0 checkpointing every step:"
    " every rank stops with the guard's error on the same step, and the checkpoint holds the last finite weights."
    (tmp_path/'nan_run.py').write_text(NAN_RUN)
    env = {k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'}
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        str(tmp_path/'nan_run.py'), str(tmp_path/'ck.pt')], capture_output=True, text=True, timeout=300,
                       env=env, cwd=tmp_path)
    res = [(tmp_path/f'ck.pt.rank{k}').read_text() if (tmp_path/f'ck.pt.rank{k}').exists() else '' for k in (0, 1)]
    assert all(t.startswith('LeptonError at step 25: ') and 'non-finite' in t for t in res), (res, r.stderr[-6000:])
    assert r.returncode == 0, r.stderr[-6000:]
    st = torch.load(tmp_path/'ck.pt', weights_only=True)
    assert st['step'] == 2 and all(torch.isfinite(v).all() for v in st['model'].values())


def test_ddp_early_stopping_checks_the_weights_it_saves(folder, cache, tmp_path):
    """Early stopping may put back an earlier epoch's weights: the ranks' agreement is measured on those,
    the saved ones. It watches accuracy here, which every rank takes from rank 0, as it does the loss."""
    r = torchrun('train', '--ddp', '--data', folder/'train', '--val', folder/'val', '--model', 'seed',
                 '--batch-size', '32', '--lr', '0.05', '--epochs', '30', '--patience', '1', '--watch', 'accuracy',
                 '--out', tmp_path/'es', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-6000:]
    m = json.loads((tmp_path/'es'/'metrics.json').read_text())
    h, es = m['ddp']['weights_sha256_per_rank'], m['early_stopping']
    assert es['weights_kept'] == es['best_epoch'] < len(m['history']), es   # an earlier epoch's weights were put back
    assert es['monitor'] == 'accuracy' and es['best_accuracy'] == max(e['accuracy'] for e in m['history']), es
    assert m['stop_reason'].startswith('accuracy did not improve for 1 epoch'), m['stop_reason']
    assert h[0] == h[1] == weights_sha256(load_model(tmp_path/'es', 'cpu')[0]), es
    assert es['patience'] == 1 and m['n_train'] == 540 and m['n_test'] == 200

def test_every_option_of_a_ddp_command_passes_through_torchrun():
    """torchrun's own parser accepts abbreviations of its options, so an option of ours that is the start of one of its
    (--monitor, of --monitor-interval) is refused by torchrun before lepton starts: each of ours must get through."""
    from torch.distributed.run import get_args_parser
    from lepton_nb.cli import build_parser
    cmds = build_parser()._subparsers._group_actions[0].choices
    ddp = {n: p for n, p in cmds.items() if any('--ddp' in a.option_strings for a in p._actions)}
    assert 'train' in ddp
    for name, p in ddp.items():
        for o in (o for a in p._actions for o in a.option_strings if o.startswith('--')):
            args = ['--standalone', '--nproc_per_node=2', '-m', 'lepton_nb.cli', name, o, '1']
            try: r = get_args_parser().parse_args(args)
            except SystemExit: pytest.fail(f"torchrun refuses {name} {o}: it abbreviates one of torchrun's own options")
            assert r.training_script_args == [name, o, '1'], (name, o)
