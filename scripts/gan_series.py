"""One run of 12a's GAN series: `train_gan` on Fashion-MNIST for a time budget with one change from the defaults,
scored at the end like `lepton gan` (and each extra weight average of G, and the live G, beside the default one).

    python scripts/gan_series.py --lr 0.004 --decay-start 0.25
    python scripts/gan_series.py --d-width 64              # a wider discriminator than the generator
    python scripts/gan_series.py --r1 0                    # no R1 penalty (train_gan's default: 0.1)
    python scripts/gan_series.py --diffaug translation     # the same random shift of real and fake images for D

prints one JSON line: the options, steps, the default average's FID and its floor, the classifier score, the FID per
epoch, and the FID of each extra average and of the live G. `--lr`, `--width` and `--r1` are options of
`train_gan`; the others are not, so this script makes them by wrapping notebook 12's functions (`lepton_nb.gan`) for
its own run:

- `--decay-start`: where `lr_factor`'s linear decay starts (default 0.5).
- `--d-width`: the discriminator's width, the generator's staying at `--width` (default: the same).
- `--r1-every`: steps between the R1 penalties of `--r1` (default 16, `GANCB`'s).
- `--diffaug`: differentiable augmentation (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN
  Training"): every image D sees, real or fake, in both steps, is shifted by up to 1/8 of its side
  ('translation', the border filled with the background, -1) and/or has a square of half its side blanked
  ('cutout'); G is trained through the same augmentation.
"""
import argparse, copy, json, time
import torch
import torch.nn.functional as F
import lepton_nb.gan as gan
import lepton_nb.gan_run as gan_run
from lepton_nb.data import get_data

p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument('--lr', type=float, default=2e-3, help='Adam learning rate of both networks (default 2e-3)')
p.add_argument('--decay-start', type=float, default=0.5,
               help='fraction of the run where the linear decay starts (default 0.5)')
p.add_argument('--time-budget', type=float, default=300, help='seconds of training (default 300)')
p.add_argument('--width', type=int, default=32, help="generator's width (default 32)")
p.add_argument('--d-width', type=int, default=None, help="discriminator's width (default: --width)")
p.add_argument('--r1', type=float, default=0.1, help="R1 penalty weight gamma (default 0.1, train_gan's; 0: none)")
p.add_argument('--r1-every', type=int, default=16, help='steps between R1 penalties (default 16)')
p.add_argument('--diffaug', default='', help="comma-separated: translation, cutout (default: none)")
p.add_argument('--extra-ema', type=float, nargs='*', default=[0.998, 0.9995, 0.9998],
               help='decays of the extra averages')
args = p.parse_args()
augs = [a for a in args.diffaug.split(',') if a]
if set(augs) - {'translation', 'cutout'}: p.error(f"unknown --diffaug {args.diffaug!r}: use translation, cutout")

lr_factor, update_ema, build_gan = gan.lr_factor, gan.GANCB.update_ema, gan_run.build_gan
gan.lr_factor = lambda progress, decay_start=args.decay_start: lr_factor(progress, decay_start)


def build_gan_two_widths(nz=100, width=32, channels=1, size=28, n_classes=0):
    "`build_gan`, with the discriminator of `--d-width` channels."
    G, _ = build_gan(nz, width, channels, size, n_classes)
    _, D = build_gan(nz, args.d_width or width, channels, size, n_classes)
    return G, D
if args.d_width: gan_run.build_gan = build_gan_two_widths


def translation(x, ratio=0.125):
    "Each image shifted by up to `ratio` of its side in x and y (its own shift), the border filled with -1."
    N, _, H, W = x.shape; s = int(H * ratio + 0.5)
    ty, tx = (torch.randint(-s, s + 1, (N, 1, 1), device=x.device) for _ in range(2))
    gy = torch.arange(H, device=x.device)[None, :, None] + ty + s
    gx = torch.arange(W, device=x.device)[None, None, :] + tx + s
    xp = F.pad(x, (s, s, s, s), value=-1.0)
    return xp[torch.arange(N, device=x.device)[:, None, None], :, gy, gx].permute(0, 3, 1, 2)


def cutout(x, ratio=0.5):
    "A square of `ratio` of the side, at a random place in each image, set to 0 (mid-grey), as in DiffAugment."
    N, _, H, W = x.shape; h, w = int(H * ratio + 0.5), int(W * ratio + 0.5)
    cy = torch.randint(0, H - h + 1, (N, 1, 1), device=x.device)      # the square's top-left corner
    cx = torch.randint(0, W - w + 1, (N, 1, 1), device=x.device)
    ys, xs = torch.arange(H, device=x.device)[None, :, None], torch.arange(W, device=x.device)[None, None, :]
    inside = (ys >= cy) & (ys < cy + h) & (xs >= cx) & (xs < cx + w)
    return x * (~inside)[:, None].to(x.dtype)


def augment(x):
    for a in augs: x = translation(x) if a == 'translation' else cutout(x)
    return x


forward = gan.Discriminator.forward

def forward_on_augmented(self, x, y=None):
    "D's forward on augmented images (`--diffaug`): whatever D sees, real or fake, in both updates of `gan_step`."
    return forward(self, augment(x), y)
if augs: gan.Discriminator.forward = forward_on_augmented


@torch.no_grad()
def update_all(self):
    "The GAN step's own average, then each extra one by the same rule (eq. ema) with its own decay."
    update_ema(self)
    G, t = self.learn.model.G, self.learn.step
    if not hasattr(self, 'extra'):
        self.extra = {d: copy.deepcopy(G).requires_grad_(False).eval() for d in args.extra_ema}
    for decay, Ge in self.extra.items():
        d = min(decay, (1 + t) / (10 + t))
        for pe, q in zip(Ge.parameters(), G.parameters()): pe.lerp_(q, 1 - d)
        for be, b in zip(Ge.buffers(), G.buffers()): be.copy_(b)
gan.GANCB.update_ema = update_all
gan_learner = gan_run.gan_learner

def learner_with_r1_every(*a, **kw):
    "`gan_learner`, with its GANCB's `r1_every` set from `--r1-every`."
    learn = gan_learner(*a, **kw)
    learn.cb(gan.GANCB).r1_every = args.r1_every
    return learn
gan_run.gan_learner = learner_with_r1_every

t0 = time.perf_counter()
learn, m = gan_run.train_gan(get_data('fashion-mnist', progress=False), time_budget=args.time_budget, lr=args.lr,
                             width=args.width, r1=args.r1, progress=False)
res = {'lr': args.lr, 'decay_start': args.decay_start, 'width': args.width, 'd_width': args.d_width or args.width,
       'r1': args.r1, 'r1_every': args.r1_every, 'diffaug': args.diffaug,
       'cpu': torch.backends.cpu.get_cpu_capability(),
       'steps': m['steps'], 'epochs': m['epochs'], 'fid': m['fid'], 'fid_floor': m['fid_floor'],
       'fid_ratio': round(m['fid'] / m['fid_floor'], 3), 'classifier_score': m['classifier_score'],
       'coverage_min': m.get('coverage_min'),
       'fid_per_epoch': [round(h['fid'], 3) for h in learn.history if 'fid' in h]}
g = learn.cb(gan.GANCB)
res.update({f'fid_ema_{d}': round(g.scorer.score(Ge)['fid'], 4) for d, Ge in g.extra.items()})
res['fid_live_G'] = round(g.scorer.score(learn.model.G)['fid'], 4)
res['wall_seconds'] = round(time.perf_counter() - t0, 1)
print(json.dumps(res))
