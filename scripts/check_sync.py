"""Fail if the notebooks and the package are out of sync, or if a notebook is not clean.

Runs `nbdev_export` and `nbdev_clean` and compares every file they may touch before and after:
a change means the committed notebooks and `lepton_nb/` disagree (export) or a notebook was committed
with execution counts or metadata that `nbdev_clean` strips (clean)."""
import hashlib, subprocess, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
bindir = Path(sys.executable).parent

def snapshot(folder, pattern):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root/folder).rglob(pattern)) if '.ipynb_checkpoints' not in p.parts}

def changed(before, after):
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))

ok = True
before = snapshot('lepton_nb', '*.py')
subprocess.run([str(bindir/'nbdev_export')], cwd=root, check=True)
diff = changed(before, snapshot('lepton_nb', '*.py'))
if diff:
    ok = False
    print("lepton_nb/ is not what the notebooks export (edit the notebooks, run nbdev_export, commit both):")
    for d in diff: print("  ", d)
before = snapshot('nbs', '*.ipynb')
subprocess.run([str(bindir/'nbdev_clean')], cwd=root, check=True)
diff = changed(before, snapshot('nbs', '*.ipynb'))
if diff:
    ok = False
    print("these notebooks were not clean (nbdev_clean has now cleaned them; commit the result):")
    for d in diff: print("  ", d)
readme = subprocess.run([sys.executable, str(root/'scripts'/'make_readme.py'), '--check'], cwd=root)
ok = ok and readme.returncode == 0
print("notebooks, package and README in sync" if ok else "out of sync")
sys.exit(0 if ok else 1)
