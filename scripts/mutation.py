"""`make mutation`: the mutation score of the formula modules (activations, conv, svm, gan_losses, metrics) with mutmut.

In a scratch copy of the project (build/mutation), mutmut changes one operator, constant or call at a time in those
modules and runs the tests that reach the changed function: the notebooks' test cells against the imported module
(tests/test_mutation_nb.py, the cells over 2 s of CPU time dropped by its `plan`), tests/test_formulas1.py,
test_formulas2.py, test_formulas3.py, test_formulas4.py, test_formulas5.py and test_mutation_kills.py. A mutant is
killed when a test fails. The figures go to benchmarks/mutation.md, with every surviving mutant's diff.

    python scripts/mutation.py              # everything (tens of minutes on 2 cores)
    python scripts/mutation.py --report     # rewrite benchmarks/mutation.md from the last run
    python scripts/mutation.py --check-kills tests/test_formulas3.py   # which survivors of the last run a new
                                            # test kills, run one by one with mutmut's switch; kept in KILLS
"""
import argparse, json, os, platform, re, shutil, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT/'build'/'mutation'
MODULES = ['activations', 'conv', 'svm', 'gan_losses', 'metrics']
NOTEBOOKS = ['01_activations', '02_convolution', '03_svm', '04_gan_losses', '06_metrics']
TESTS = ['tests/test_mutation_nb.py', 'tests/test_formulas1.py', 'tests/test_formulas2.py',
         'tests/test_formulas3.py', 'tests/test_formulas4.py', 'tests/test_formulas5.py',
         'tests/test_mutation_kills.py']
OUT = ROOT/'benchmarks'/'mutation.md'
MUTMUT = str(Path(sys.executable).parent/'mutmut')
EQUIVALENT = ROOT/'benchmarks'/'mutation_equivalent.json'   # {mutant name: why it is equivalent}
KILLS = ROOT/'benchmarks'/'mutation_kills.json'   # {survivor of the last full run: the test added since that kills it}


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}   # the tests must import mutmut's copy
    e.update(OMP_NUM_THREADS='1', MPLBACKEND='Agg', LEPTON_NB_CELLS='1', LEPTON_NB_PLAN=str(SCRATCH/'nb_plan.json'))
    return e


def prepare():
    "The scratch copy, the notebook plan and mutmut's settings."
    SCRATCH.mkdir(parents=True, exist_ok=True)
    for p in SCRATCH.iterdir():                          # mutmut's own folder stays: it reuses what has not changed
        if p.name != 'mutants': shutil.rmtree(p) if p.is_dir() else p.unlink()
    ignore = shutil.ignore_patterns('__pycache__', '*.pyc')
    shutil.copytree(ROOT/'lepton_nb', SCRATCH/'lepton_nb', ignore=ignore)
    shutil.copytree(ROOT/'tests', SCRATCH/'tests', ignore=ignore)
    (SCRATCH/'nbs').mkdir()
    for nb in NOTEBOOKS: shutil.copy(ROOT/'nbs'/f'{nb}.ipynb', SCRATCH/'nbs')
    shutil.copy(ROOT/'settings.ini', SCRATCH)
    tests = [t for t in TESTS if (ROOT/t).exists()]    # a change here is a change of mutmut's settings: it then
                                                       # forgets every module's verdicts, not only the one run
    toml = ['[tool.mutmut]', 'source_paths = ["lepton_nb"]',
            'only_mutate = [' + ', '.join(f'"lepton_nb/{m}.py"' for m in MODULES) + ']',
            'pytest_add_cli_args_test_selection = [' + ', '.join(f'"{t}"' for t in tests) + ']',
            'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-W", "ignore"]',
            'also_copy = ["nbs", "settings.ini"]', 'use_git_change_detection = false']
    (SCRATCH/'pyproject.toml').write_text('\n'.join(toml) + '\n')
    code = ('import json, sys; sys.path.insert(0, "tests"); import torch; torch.set_num_threads(1)\n'
            'import test_mutation_nb as t\n'
            f'json.dump({{nb: t.plan(nb) for nb in {NOTEBOOKS!r}}}, open("nb_plan.json", "w"), indent=1)')
    subprocess.run([sys.executable, '-c', code], cwd=SCRATCH, env={**env(), 'PYTHONPATH': str(SCRATCH)}, check=True)


def results(with_kills:bool=True) -> dict:
    "module -> {mutant name: status}, read from mutmut's files (and KILLS unless `with_kills` is False)."
    sys.path.insert(0, str(SCRATCH))
    from mutmut.stats import status_by_exit_code
    out = {}
    for m in MODULES:
        meta = json.loads((SCRATCH/'mutants'/'lepton_nb'/f'{m}.py.meta').read_text())
        out[m] = {k: status_by_exit_code[v] for k, v in meta['exit_code_by_key'].items()}
    kills = json.loads(KILLS.read_text()) if KILLS.exists() and with_kills else {}
    for st in out.values():
        for k in st:
            if st[k] == 'survived' and k in kills: st[k] = 'killed'   # by a test added after that run (checked)
    return out


KILL_CHECK = '''import json, os, sys
import pytest
class Failed:
    def __init__(self): self.first = None
    def pytest_runtest_logreport(self, report):
        if report.failed and self.first is None: self.first = report.nodeid.split('::')[-1]
out = {}
for n in json.loads(sys.argv[1]):
    os.environ['MUTANT_UNDER_TEST'] = n
    f = Failed()
    pytest.main([*sys.argv[2:], '-x', '-q', '-p', 'no:cacheprovider', '-W', 'ignore'], plugins=[f])
    if f.first: out[n] = f.first
print(json.dumps(out))'''


def check_kills(tests:list) -> dict:
    """The survivors of the last run that `tests` (files added or changed since) kill: each mutant switched on in
    mutmut's copy in turn, in one process. Adds them to KILLS; returns them."""
    for t in tests: shutil.copy(ROOT/t, SCRATCH/'mutants'/t)
    raw = {m: st for m, st in results(with_kills=False).items()}
    names = [n for st in raw.values() for n, s in st.items() if s in ('survived', 'no tests')]
    r = subprocess.run([sys.executable, '-c', KILL_CHECK, json.dumps(names), *tests], cwd=SCRATCH/'mutants',
                       env=env(), capture_output=True, text=True)
    got = json.loads(r.stdout.strip().splitlines()[-1])
    kills = json.loads(KILLS.read_text()) if KILLS.exists() else {}
    kills.update(got)
    KILLS.write_text(json.dumps(dict(sorted(kills.items())), indent=1, ensure_ascii=False) + '\n')
    print(f'{len(got)} of {len(names)} survivors killed by {", ".join(tests)}')
    return got


def forget_kills(module:str):
    "A module run again rescores all its mutants (and mutmut may number them anew): its entries in KILLS go."
    if not KILLS.exists(): return
    kills = json.loads(KILLS.read_text())
    KILLS.write_text(json.dumps({k: v for k, v in kills.items() if not k.startswith(f'lepton_nb.{module}.')},
                                indent=1, ensure_ascii=False) + '\n')


def diffs(names:list) -> dict:
    "name -> the mutant's changed lines, from mutmut's files (in this process: one `mutmut show` each is slow)."
    if not names: return {}
    code = ('import json, sys\nfrom mutmut.__main__ import find_mutant, get_diff_for_mutant\nout = {}\n'
            'for n in sys.argv[1:]:\n    try: out[n] = get_diff_for_mutant(n, path=find_mutant(n).path)\n'
            '    except Exception as e: out[n] = repr(e)\nprint(json.dumps(out))')
    r = subprocess.run([sys.executable, '-c', code, *names], cwd=SCRATCH, env=env(), capture_output=True, text=True)
    if r.returncode: print(r.stderr[-2000:], file=sys.stderr)
    got = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {}
    keep = lambda ln: ln.startswith(('+', '-')) and not ln.startswith(('+++', '---'))
    return {n: [ln for ln in got.get(n, '').splitlines() if keep(ln)] for n in names}


def docstring_only(lines:list) -> bool:
    "A mutant that changes only a function's one-line docstring: no behaviour can tell it apart."
    body = [ln[1:].strip() for ln in lines]
    return bool(body) and all(re.fullmatch(r'"[^"]*"', b) for b in body)


def report(seconds:float|None=None):
    res = results()
    equivalent = json.loads(EQUIVALENT.read_text()) if EQUIVALENT.exists() else {}
    left = {m: [n for n, s in st.items() if s not in ('killed', 'timeout', 'not checked')] for m, st in res.items()}
    changed = diffs([n for names in left.values() for n in names])
    for n, lines in changed.items():
        if n not in equivalent and docstring_only(lines):
            equivalent[n] = 'equivalent: only the docstring changes (mutmut mutates one-line docstrings)'
    plan = json.loads((SCRATCH/'nb_plan.json').read_text())
    cpu = platform.processor() or platform.machine()
    lines = ['# Mutation score of the formula modules', '',
             'Written by `make mutation` (scripts/mutation.py, mutmut). A mutant is one change in the module (an '
             'operator, a constant, a call); it is killed when a test fails. Tests: the notebooks\' test cells against '
             'the imported module (the cells over 2 s of CPU time dropped, see below), ' + ', '.join(TESTS[1:]) + '.',
             '',
             'Survivors of the run that a test added since kills (checked one by one with mutmut\'s switch, listed '
             'in benchmarks/mutation_kills.json) count as killed; `make mutation` runs everything again.', '',
             f'Run: {time.strftime("%Y-%m-%d")}, {os.cpu_count()} CPU cores ({cpu})'
             + (f', {seconds / 60:.0f} minutes.' if seconds else '.'), '',
             '| module | mutants | checked | killed | timeout | survived | no tests | score (killed+timeout)/checked | '
             'score without the equivalent |', '|---|---:|---:|---:|---:|---:|---:|---:|---:|']
    for m, st in res.items():
        n0 = len(st); n = sum(s != 'not checked' for s in st.values())
        k = sum(s == 'killed' for s in st.values()); t = sum(s == 'timeout' for s in st.values())
        s = sum(s == 'survived' for s in st.values()); nt = sum(s == 'no tests' for s in st.values())
        eq = sum(1 for name in left[m] if name in equivalent)
        pct = lambda a, b: f'{a / b:.1%}' if b else 'not run'     # none checked: not run in this scratch copy
        lines.append(f'| {m} | {n0} | {n} | {k} | {t} | {s} | {nt} | {pct(k + t, n)} | {pct(k + t, n - eq)} |')
    lines += ['', '## Surviving mutants', '']
    for m, st in res.items():
        lines.append(f'### {m} ({len(left[m])})')
        lines.append('')
        for name in left[m]:
            why = equivalent.get(name, '**not shown equivalent: a test gap**')
            change = ' / '.join(ln.strip() for ln in changed.get(name, []))[:300].replace('`', "'")
            lines.append(f'- `{name}` ({st[name]}): `{change}` — {why}')
        lines.append('')
    lines += ['## Notebook cells dropped from the mutation run (over 2 s of CPU time, or needing a dropped cell)', '']
    for nb, p in plan.items():
        lines.append(f'- {nb}: {len(p["keep"])} of {p["cells"]} test cells run ({p["seconds"]} s); dropped: '
                     + (', '.join(f'{i} ({why.split(":")[0]})' for i, why in p['dropped'].items()) or 'none'))
    OUT.write_text('\n'.join(lines) + '\n')
    print(OUT.read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--report', action='store_true', help='only rewrite the report from the last run')
    p.add_argument('--check-kills', nargs='+', metavar='TEST', help='which survivors of the last run these test '
                   'files kill (added to benchmarks/mutation_kills.json), then the report')
    p.add_argument('--jobs', type=int, default=2)
    p.add_argument('--modules', default='gan_losses,activations,metrics,svm,conv')
    a = p.parse_args(argv)
    t0 = time.time()
    if a.check_kills: check_kills(a.check_kills)
    elif not a.report:
        prepare()
        for m in a.modules.split(','):                   # one module at a time: each one's figures are kept as it ends
            forget_kills(m)
            r = subprocess.run([MUTMUT, 'run', '--max-children', str(a.jobs), f'lepton_nb.{m}.*'], cwd=SCRATCH,
                               env=env())
            if r.returncode: print(f'mutmut ended with status {r.returncode} on {m}', file=sys.stderr)
    report(None if a.report or a.check_kills else time.time() - t0)
    return 0


if __name__ == '__main__':
    sys.exit(main())
