"""One run of 12a's third GAN series: `train_gan` on Fashion-MNIST for a time budget with a chosen learning rate and
start of its decay, keeping more weight averages of G beside the default one and scoring each at the end.

    python scripts/gan_series.py --lr 0.004 --decay-start 0.25

prints one JSON line: steps, the default average's FID and its floor, the classifier score, the FID per epoch, and
the FID of each extra average and of the live G. The decay start and the extra averages are not options of
`train_gan`, so this script sets them by wrapping two of notebook 12's functions (`lepton_nb.gan`) for its own run."""
import argparse, copy, json, time
import torch
import lepton_nb.gan as gan
import lepton_nb.gan_run as gan_run
from lepton_nb.data import get_data

p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument('--lr', type=float, default=2e-3, help='Adam learning rate of both networks (default 2e-3)')
p.add_argument('--decay-start', type=float, default=0.5,
               help='fraction of the run where the linear decay starts (default 0.5)')
p.add_argument('--time-budget', type=float, default=300, help='seconds of training (default 300)')
p.add_argument('--extra-ema', type=float, nargs='*', default=[0.998, 0.9995, 0.9998],
               help='decays of the extra averages')
args = p.parse_args()

lr_factor, update_ema = gan.lr_factor, gan.GANCB.update_ema
gan.lr_factor = lambda progress, decay_start=args.decay_start: lr_factor(progress, decay_start)

@torch.no_grad()
def update_all(self):
    "The GAN step's own average, then each extra one by the same rule (eq. ema) with its own decay."
    update_ema(self)
    G, step = self.learn.model.G, self.learn.step
    if not hasattr(self, 'extra'):
        self.extra = {d: copy.deepcopy(G).requires_grad_(False).eval() for d in args.extra_ema}
    for decay, Ge in self.extra.items():
        d = min(decay, (1 + step) / (10 + step))
        for pe, q in zip(Ge.parameters(), G.parameters()): pe.lerp_(q, 1 - d)
        for be, b in zip(Ge.buffers(), G.buffers()): be.copy_(b)
gan.GANCB.update_ema = update_all

t0 = time.perf_counter()
learn, m = gan_run.train_gan(get_data('fashion-mnist', progress=False), time_budget=args.time_budget, lr=args.lr,
                             progress=False)
res = {'lr': args.lr, 'decay_start': args.decay_start, 'steps': m['steps'], 'epochs': m['epochs'], 'fid': m['fid'],
       'fid_floor': m['fid_floor'], 'classifier_score': m['classifier_score'],
       'fid_per_epoch': [round(h['fid'], 3) for h in learn.history if 'fid' in h]}
g = learn.cb(gan.GANCB)
res.update({f'fid_ema_{d}': round(g.scorer.score(Ge)['fid'], 4) for d, Ge in g.extra.items()})
res['fid_live_G'] = round(g.scorer.score(learn.model.G)['fid'], 4)
res['wall_seconds'] = round(time.perf_counter() - t0, 1)
print(json.dumps(res))
