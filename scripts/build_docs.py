"""Build the documentation site into `_docs/` from the notebooks; the site needs no network to be read.

    python scripts/build_docs.py [--renderer auto|quarto|smalldocs]        (what `make docs` runs)

1. Process, as `nbdev_proc_nbs` does but without its step that downloads Quarto: `nbs/nbdev.yml` from settings.ini,
   the symbol index, then every notebook of `nbs/` into `_proc/`, with nbdev's `show_doc` cells added and run.
   `nbs/_quarto.yml` is a link to the top-level `_quarto.yml`, the one configuration of both renderers.
2. Links: nbdev writes links to API names as absolute addresses of the published site; they become links to the
   notebook (`00_core.ipynb#get_device`), which both renderers write as that page's file name, so they also work
   offline. A link to a numbered notebook that does not exist yet (a planned chapter) becomes plain text. Outputs
   of live widgets (sliders, progress bars) are dropped: a static page cannot run them. Signatures are written as
   Python writes them (`class`, `*args`, `**kw`, no `NoneType`, no markdown links inside code; see `tidy_signature`).
3. Render with Quarto where `quarto` is installed (the command `nbdev_docs` runs, without its rewrite of README.md,
   which `make readme` owns), else with smalldocs, taught Quarto's `output-file` so that pages get Quarto's names
   (`00_core.ipynb` -> `core.html`) and nbdev's links hold on both.
4. Offline: KaTeX and mermaid come from the npm registry at pinned versions (sha512 checked), are kept in
   `.cache/docs-vendor/`, and are copied into `_docs/site_libs/`; every CDN address in the pages points there.
   Web-font imports in the theme's CSS are dropped (the theme's font list falls back to the system's fonts).
   Formula labels: each labelled formula gets an anchor (`#eq-fid`) and a line of the functions that compute it and
   the code cells that cite it; every citation of a label elsewhere links to its formula (`equation_links`).
5. Check: a link to a method with no API entry of its own goes to its class's entry (and the build says so); a link
   to a name whose #anchor is another heading (ids ignore case: `relu`, `ReLU` and a section "ReLU" share `#relu`)
   goes to the entry whose heading is exactly that name; then every notebook has a page, every exported name has its
   API entry, no page loads anything from another
   host, no internal link or #anchor is broken. Problems are listed and the exit code is 1.
"""
import argparse, base64, fnmatch, hashlib, html.parser, json, os, posixpath, re, shutil, subprocess, sys, tarfile
import tempfile, time
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
VENDOR_CACHE = ROOT/'.cache'/'docs-vendor'

# The browser libraries the pages load, from the npm registry. The versions are the ones smalldocs' pages are written
# for; the sha512 is the registry's `dist.integrity` of that tarball. `files` maps a file of the package to its place
# under `site_libs/NAME/`; a pattern with `*` copies every file it matches into the folder it maps to.
NPM = {
    'katex': dict(version='0.16.11',
                  integrity='sha512-RQrI8rlHY92OLf3rho/Ts8i/XvjgguEjOkO1BEXcU3N8BqPpSzBNwV/G0Ukr+P/l3ivvJUE/Fa/CwbS6HesGNQ==',
                  files={'dist/katex.min.js': 'katex.min.js', 'dist/katex.min.css': 'katex.min.css',
                         'dist/contrib/auto-render.min.js': 'contrib/auto-render.min.js',
                         'dist/fonts/*.woff2': 'fonts/', 'LICENSE': 'LICENSE'}),
    'mermaid': dict(version='11.4.1',
                    integrity='sha512-Mb01JT/x6CKDWaxigwfZYuYmDZ6xtrNwNlidKZwkSrDaY9n90tdrJTV5Umk+wP1fZscGptmKFXHsXMDEVZ+Q6A==',
                    files={'dist/mermaid.min.js': 'mermaid.min.js', 'LICENSE': 'LICENSE'}),
}
CDN = r'(?:https?:)?//cdn\.jsdelivr\.net/npm/'
# KaTeX from a CDN (smalldocs, and Quarto's `html-math-method: katex`) -> the copy in site_libs/katex/
KATEX_RE = re.compile(CDN + r'katex@[^/"\'\s]+/dist/')
# smalldocs loads mermaid as an ES module from a CDN; the single-file build served here defines the global `mermaid`
MERMAID_RE = re.compile(r'<script type="module">\s*import mermaid from ["\']' + CDN + r'mermaid@[^"\']+["\'];?')
FONT_IMPORT_RE = re.compile(r'@import\s+(?:url\(\s*(["\']?)(?:https?:)?//[^)]*\)|(["\'])(?:https?:)?//.*?\2)[^;]*;')
# Quarto options smalldocs reports as unread although the site does what they ask
EXPECTED_WARNINGS = re.compile(r'(output-file is not read by smalldocs|html-math-method is ignored)$')

def log(msg): print(msg, file=sys.stderr, flush=True)

# ------------------------------------------------------------------ notebooks and their pages

def notebooks(nbs:Path) -> list[Path]:
    "Every notebook nbdev documents, relative to `nbs`, as nbdev finds them (no `_` or `.` files and folders)."
    from nbdev.doclinks import nbglob
    return sorted(Path(p).relative_to(nbs) for p in nbglob(nbs))

def page_name(nb:Path) -> str:
    "The page Quarto writes for a notebook, as nbdev names it: `00_core.ipynb` -> `core.html`."
    from nbdev.doclinks import _nbpath2html
    return _nbpath2html(PurePosixPath(nb.as_posix())).as_posix()

# ------------------------------------------------------------------ 1. process

def process(cfg) -> Path:
    "Run nbdev's processing of the notebooks into `_proc/`; remove what is left there of deleted sources."
    from nbdev.quarto import refresh_quarto_yml
    from nbdev.serve import proc_nbs
    import nbdev.doclinks
    nbs = cfg.nbs_path
    link, top = nbs/'_quarto.yml', ROOT/'_quarto.yml'
    if not (link.is_symlink() and link.resolve() == top.resolve()):
        # missing, or a plain file (nbdev writes its default when the link is missing; a checkout without symbolic
        # links has a copy): the link again, or else a copy of the one source of truth
        if link.exists() or link.is_symlink():
            log("note: nbs/_quarto.yml was not the link to _quarto.yml; replaced (edit _quarto.yml, the only one)")
            link.unlink()
        try: link.symlink_to(Path('..')/'_quarto.yml')
        except OSError: shutil.copyfile(top, link)
    refresh_quarto_yml()
    nbdev.doclinks._build_modidx()
    # nbdev reprocesses only the notebooks changed since the last build; links between pages depend on which notebooks
    # exist and what they export, so a change to either reprocesses them all
    proc = ROOT/'_proc'
    stamp = hashlib.sha256('\n'.join([*map(str, notebooks(nbs)),
                                      (cfg.lib_path/'_modidx.py').read_text(encoding='utf-8')]).encode()).hexdigest()
    old = proc/'.lepton-docs-stamp'
    force = not old.exists() or old.read_text() != stamp
    proc = proc_nbs(nbs, force=force)
    (proc/'.lepton-docs-stamp').write_text(stamp)
    keep = {p.relative_to(nbs) for p in nbs.rglob('*') if p.is_file()}
    for p in sorted(proc.rglob('*'), reverse=True):
        rel = p.relative_to(proc)
        if rel.parts[0] == cfg.doc_path.name or rel.parts[0].startswith('.'): continue
        if p.is_file() and rel not in keep and Path(f'{rel}.py') not in keep: p.unlink()  # x.qmd comes from x.qmd.py
        elif p.is_dir() and not any(p.iterdir()): p.rmdir()
    return proc

# ------------------------------------------------------------------ 2. links

MD_LINK_RE = re.compile(r'\[([^\]\n]+)\]\(([^)\s]+\.ipynb)(#[^)\s]*)?\)')

def planned_target(nbs:Path, nb:Path, href:str) -> str | None:
    "The notebook a link points at, relative to `nbs`, when it is a numbered notebook that does not exist yet."
    target = posixpath.normpath(posixpath.join(PurePosixPath(nb.as_posix()).parent.as_posix(), href))
    return target if re.match(r'\d', PurePosixPath(target).name) and not (nbs/target).exists() else None

def planned_links(nbs:Path) -> list[str]:
    "Links in the notebooks' text to numbered notebooks that do not exist yet, one line each."
    out = []
    for nb in notebooks(nbs):
        for c in json.loads((nbs/nb).read_text(encoding='utf-8'))['cells']:
            if c['cell_type'] != 'markdown': continue
            out += [f"{nb.as_posix()}: {m.group(2)} does not exist yet; its link is plain text until it does"
                    for m in MD_LINK_RE.finditer(''.join(c['source'])) if planned_target(nbs, nb, m.group(2))]
    return out

WIDGET = 'application/vnd.jupyter.widget-view+json'
PRIVATE_LINK_RE = re.compile(r'\[(`_\w[\w.]*`)\]\([^)\s]*\)')

# The signatures `show_doc` writes, with this nbdev and fastcore, read wrong in three ways: a class is written as a
# `def`, `*args`/`**kw` as `args:VAR_POSITIONAL`/`kw:VAR_KEYWORD` (and the comment of a last `**kw` lands after the
# return type, as if it described the result), and a parameter with no annotation and a default of None gets the type
# `NoneType`. Links to API names inside the code block are markdown that a code block shows as written.
SIG_RE = re.compile(r'(### ([\w.]+)\n+```python\n)(.*?)(```)', re.S)
CODE_LINK_RE = re.compile(r'\[(`[^`\n]+`)\]\([^)\s]*\)')

def class_names() -> set[str]:
    "The names of the classes the package defines (their entries are written as `class`)."
    import importlib, inspect, pkgutil
    import lepton_nb
    out = set()
    for m in pkgutil.iter_modules(lepton_nb.__path__):
        mod = importlib.import_module(f'lepton_nb.{m.name}')
        out |= {n for n, o in vars(mod).items() if inspect.isclass(o) and getattr(o, '__module__', '') == mod.__name__}
    return out

SHOW_DOC_SRC = '#| echo: false\n#| output: asis\nshow_doc('
SOURCE_LINE_RE = re.compile(r'\[source\]\([^)#]*#L(\d+)\)')

def in_source_order(cells:list) -> bool:
    """nbdev adds the `show_doc` cells of an export cell's names in reverse order (each goes in just after the cell).
    Sort each run of them by the line of the definition (their "source" link). True if anything moved."""
    def line(c):
        md = ''.join(''.join(o.get('data', {}).get('text/markdown', '')) for o in c.get('outputs', []))
        m = SOURCE_LINE_RE.search(md)
        return int(m.group(1)) if m else None
    is_doc = lambda c: c['cell_type'] == 'code' and ''.join(c['source']).startswith(SHOW_DOC_SRC)
    moved, i = False, 0
    while i < len(cells):
        j = i
        while j < len(cells) and is_doc(cells[j]): j += 1
        run = cells[i:j]
        if len(run) > 1 and all(line(c) is not None for c in run):
            srt = sorted(run, key=line)
            if srt != run: cells[i:j], moved = srt, True
        i = max(j, i + 1)
    return moved

def tidy_signature(md:str, classes:set[str]) -> str:
    "Rewrite the signature code blocks of one `show_doc` output as Python would write them (see above)."
    def one(m):
        head, name, code, end = m.groups()
        code = re.sub(r'(\w+):VAR_KEYWORD\n\)(->[^\n]*?|): # ([^\n]*)', r'**\1, # \3\n)\2:', code)
        code = re.sub(r'(\w+):VAR_POSITIONAL', r'*\1', code)
        code = re.sub(r'(\w+):VAR_KEYWORD', r'**\1', code)
        code = re.sub(r'(\w+):NoneType=None', r'\1=None', code)
        code = CODE_LINK_RE.sub(r'\1', code)
        if name in classes:
            code = re.sub(r'^(\s*)def ' + re.escape(name) + r'\(', r'\1class ' + name + '(', code, count=1, flags=re.M)
        return head + code + end
    return SIG_RE.sub(one, md)

def prepare_pages(proc:Path, nbs:Path, site_url:str) -> None:
    """In `_proc/`: nbdev's absolute links to the site become links to notebooks; links to planned notebooks, text.
    Each page also gets `order:` (index first, then by file name), which both renderers' `auto` sidebar sorts by."""
    nbs_list = notebooks(nbs)
    ranked = sorted(nbs_list, key=lambda p: (p.parent.as_posix(), p.stem != 'index', p.name))
    order = {nb: i for i, nb in enumerate(ranked)}
    by_page = {page_name(nb): nb for nb in nbs_list}
    self_re = re.compile(re.escape(site_url.rstrip('/')) + r'/([\w./-]+\.html)(#[^)\s"\'>]*)?')
    classes = class_names()
    for nb in nbs_list:
        f = proc/nb
        if not f.exists(): continue
        here = PurePosixPath(nb.as_posix()).parent.as_posix() or '.'
        def to_source(m):
            src = by_page.get(m.group(1))
            return m.group(0) if src is None else posixpath.relpath(src.as_posix(), here) + (m.group(2) or '')
        def fix(text):
            text = self_re.sub(to_source, text)
            text = PRIVATE_LINK_RE.sub(r'\1', text)   # private helpers have no API entry to link to
            return MD_LINK_RE.sub(lambda m: m.group(1) if planned_target(nbs, nb, m.group(2)) else m.group(0), text)
        d = json.loads(f.read_text(encoding='utf-8'))
        changed = False
        front = d['cells'][0] if d['cells'] and d['cells'][0]['cell_type'] == 'raw' else None
        head = ''.join(front['source']) if front is not None else ''
        if head.startswith('---\n') and not re.search(r'^order:', head, re.M):
            front['source'] = '---\n' + f'order: {order[nb]}\n' + ''.join(front['source'])[4:]
            changed = True
        if in_source_order(d['cells']): changed = True
        for c in d['cells']:
            # a live widget (a slider, a tqdm bar in Jupyter) cannot run on a static page, and its text stand-in reads
            # as debris there (`interactive(children=...`, a bar frozen at 0%); the page shows the plots drawn beside it
            kept = [o for o in c.get('outputs', []) if WIDGET not in o.get('data', {})]
            if len(kept) != len(c.get('outputs', [])): c['outputs'], changed = kept, True
            if c['cell_type'] == 'markdown':
                src = ''.join(c['source']); new = fix(src)
                if new != src: c['source'], changed = new, True
            for o in c.get('outputs', []):
                md = o.get('data', {}).get('text/markdown')
                if md is None: continue
                src = ''.join(md); new = tidy_signature(fix(src), classes)
                if new != src: o['data']['text/markdown'], changed = new, True
        if changed: f.write_text(json.dumps(d, indent=1, ensure_ascii=False), encoding='utf-8')

# ------------------------------------------------------------------ 3. render

def render_quarto(proc:Path, cfg) -> None:
    "Render `_proc/` with Quarto, as `nbdev_docs` does (its README step aside)."
    subprocess.run(['quarto', 'render', '--no-cache'], cwd=proc, check=True)

def render_smalldocs(proc:Path, cfg) -> list[str]:
    "Build the site from `_proc/` with smalldocs, pages named by their `output-file` as Quarto names them."
    from smalldocs.config import load
    from smalldocs.site import Site

    class QuartoNamedSite(Site):
        def read(self, src):
            page = super().read(src)
            name = page.front.get('output-file')
            if name: page.out = src.parent/str(name)
            return page

    site = QuartoNamedSite(load(proc), quiet=True)
    site.build()
    return [w for w in site.warnings if not EXPECTED_WARNINGS.search(w)]

# ------------------------------------------------------------------ 4. offline

def sri(data:bytes) -> str: return 'sha512-' + base64.b64encode(hashlib.sha512(data).digest()).decode()

def vendor(name:str) -> Path:
    "The files of one npm package that the site serves, fetched once into the cache with npm and checked."
    spec = NPM[name]
    dest = VENDOR_CACHE/f"{name}-{spec['version']}"
    stamp = dest/'.integrity'
    if stamp.exists() and stamp.read_text().strip() == spec['integrity']: return dest
    npm = shutil.which('npm')
    if npm is None:
        raise SystemExit(f"build_docs: {name} {spec['version']} is not in {VENDOR_CACHE.relative_to(ROOT)} and npm is "
                         "not installed: install Node.js's npm (Debian: apt-get install npm) and build again")
    log(f"fetching {name}@{spec['version']} from the npm registry")
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([npm, 'pack', f"{name}@{spec['version']}", '--pack-destination', tmp, '--json'],
                           capture_output=True, text=True, cwd=tmp)
        if r.returncode != 0:
            raise SystemExit(f"build_docs: npm could not fetch {name}@{spec['version']}: {r.stderr.strip()[-500:]}")
        tgz = Path(tmp)/json.loads(r.stdout)[0]['filename']
        if sri(tgz.read_bytes()) != spec['integrity']:
            raise SystemExit(f"build_docs: {tgz.name} does not have the pinned sha512; refusing to use it")
        shutil.rmtree(dest, ignore_errors=True)
        with tarfile.open(tgz) as t:
            members = {m.name.removeprefix('package/'): m for m in t.getmembers() if m.isfile()}
            for src, to in spec['files'].items():
                if '*' in src:
                    picked = [(k, to + k.rsplit('/', 1)[1]) for k in sorted(members) if fnmatch.fnmatchcase(k, src)]
                else: picked = [(src, to)]
                if not picked or any(k not in members for k, _ in picked):
                    raise SystemExit(f"build_docs: {name}@{spec['version']} has no {src}")
                for k, out in picked:
                    (dest/out).parent.mkdir(parents=True, exist_ok=True)
                    (dest/out).write_bytes(t.extractfile(members[k]).read())
    stamp.write_text(spec['integrity'])
    return dest

def make_offline(out:Path) -> list[str]:
    "Serve KaTeX and mermaid from `site_libs/`, point the pages at them, drop web-font imports. Returns notes."
    notes = []
    libs = out/'site_libs'
    for name in NPM:
        shutil.copytree(vendor(name), libs/name, dirs_exist_ok=True, ignore=shutil.ignore_patterns('.integrity'))
    for page in out.rglob('*.html'):
        offset = '../' * (len(page.relative_to(out).parts) - 1)
        text = page.read_text(encoding='utf-8')
        new = KATEX_RE.sub(f'{offset}site_libs/katex/', text)
        new = MERMAID_RE.sub(f'<script src="{offset}site_libs/mermaid/mermaid.min.js"></script>'
                             '<script type="module">', new)
        if new != text: page.write_text(new, encoding='utf-8')
    for css in out.rglob('*.css'):
        text = css.read_text(encoding='utf-8', errors='surrogateescape')
        new = FONT_IMPORT_RE.sub('', text)
        if new != text:
            css.write_text(new, encoding='utf-8', errors='surrogateescape')
            notes.append(f"{css.relative_to(out).as_posix()}: dropped its import of web fonts from another host")
    return notes

# ------------------------------------------------------------------ 4b. formula labels

# A derived formula carries a label in its maths, `\text{(eq. fid)}`, and the prose, the docstrings and the tests that
# compute or check it cite the same label, "(eq. fid)". In the site each labelled formula gets the anchor `#eq-fid`
# and, under a display formula, the functions whose docstrings cite it and the code cells that do (tests, mostly);
# every citation outside the maths (prose, API entries, code) links back to the formula, on its page or another.
EQ_TAG_RE = re.compile(r'\\text\{\(eq\. ([A-Za-z][\w-]*)\)\}')
EQ_REF_RE = re.compile(r'\beq\. ([A-Za-z][\w-]*[A-Za-z0-9])')
# a page as text and tags: a comment, a whole <script> or <style> (which may hold '<' and '>'), a tag whose quoted
# attribute values may hold '>'
ATTRS = r"""(?:"[^"]*"|'[^']*'|[^'">])*"""
TAG_RE = re.compile(r'<!--.*?-->|<(script|style)\b' + ATTRS + r'>.*?</\1\s*>|</?[A-Za-z]' + ATTRS + '>', re.S | re.I)
NO_LINKS = ('a', 'title', 'textarea', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6')   # no link inside these (nor in maths)

def equation_labels(nbs:Path) -> tuple[dict, list[str]]:
    """Each formula label -> the page whose maths is tagged with it. Also the problems: a label tagged on two pages, and
    a citation (in prose or code) of a label that no formula carries, such as a misspelt or renamed one."""
    tagged, cited, problems = {}, {}, []
    for nb in notebooks(nbs):
        page = page_name(nb)
        for c in json.loads((nbs/nb).read_text(encoding='utf-8'))['cells']:
            src = ''.join(c['source'])
            if c['cell_type'] == 'markdown':
                for lab in EQ_TAG_RE.findall(src):
                    if tagged.setdefault(lab, page) != page:
                        problems.append(f"formula label (eq. {lab}) is tagged on {tagged[lab]} and on {page}")
                src = EQ_TAG_RE.sub('', src)
            for lab in EQ_REF_RE.findall(src): cited.setdefault(lab, page)
    problems += [f"{page}: (eq. {lab}) is cited, but no formula carries that label (\\text{{(eq. {lab})}} in its maths)"
                 for lab, page in cited.items() if lab not in tagged]
    return tagged, sorted(set(problems))

def equation_users() -> dict:
    "Each formula label -> the exported functions and classes whose docstring cites it, as (name, page#anchor)."
    import importlib, inspect
    from lepton_nb._modidx import d
    users = {}
    for mod, syms in d['syms'].items():
        m = importlib.import_module(mod)
        for sym, (doc, _py) in syms.items():
            name = sym[len(mod) + 1:]
            if '.' in name or name not in getattr(m, '__all__', ()): continue     # API entries of the page only
            for lab in dict.fromkeys(EQ_REF_RE.findall(inspect.getdoc(getattr(m, name)) or '')):
                users.setdefault(lab, []).append((name, doc))
    return users

def _tokens(text:str):
    "A page as (piece, tag, closing): text has tag '', a comment or a whole script or style has tag '!'."
    pos = 0
    for m in TAG_RE.finditer(text):
        if m.start() > pos: yield text[pos:m.start()], '', False
        t = m.group(0)
        if t.startswith('<!--') or m.group(1): yield t, '!', False
        else:
            n = re.match(r'<(/?)([A-Za-z][\w-]*)', t)
            yield t, n.group(2).lower(), bool(n.group(1))
        pos = m.end()
    if pos < len(text): yield text[pos:], '', False

def code_citations(pages:list[Path]) -> dict:
    "Each formula label -> the code cells that cite it, as (page, id of the cell's code block); not API signatures."
    cells = {}
    for page in pages:
        divs, block, in_pre = [], None, False
        for t, tag, closing in _tokens(page.read_text(encoding='utf-8')):
            if tag == 'div' and not closing:
                cls = re.search(r'\bclass="([^"]*)"', t)
                divs.append('cell-output' in (cls.group(1).split() if cls else ()))
                if 'sourceCode' in t:       # a code cell's code; a code block inside an output is show_doc's signature
                    m = re.search(r'\bid="([^"]+)"', t); block = m.group(1) if m and not any(divs) else None
            elif tag == 'div' and closing and divs: divs.pop()
            elif tag == 'pre': in_pre = not closing
            elif not tag and in_pre and block:
                for lab in EQ_REF_RE.findall(t): cells.setdefault(lab, {}).setdefault((page.name, block), None)
    return {lab: list(v) for lab, v in cells.items()}

def uses_line(page:str, lab:str, users:dict, cells:dict) -> str:
    "The small line under a labelled display formula: what computes it, and the code cells that cite it."
    href = lambda p, frag: f"{'' if p == page else p}#{frag}"
    parts = []
    if users.get(lab):
        parts.append('computed by ' + ', '.join(f'<a href="{href(*doc.split("#", 1))}"><code>{name}</code></a>'
                                                 for name, doc in users[lab]))
    if cells.get(lab):
        parts.append('cited in code cells ' + ' '.join(f'<a href="{href(p, b)}">{i}</a>'
                                                       for i, (p, b) in enumerate(cells[lab], 1)))
    return f'<span class="eq-uses">{" · ".join(parts)}</span>' if parts else ''

def link_equations(page:str, text:str, labels:dict, users:dict|None=None, cells:dict|None=None) -> str:
    """One page with its formula anchors (`id="eq-LABEL"` before the maths that carries the label, and under a display
    formula the line of what computes and cites it) and every citation of a label as a link to its formula. Maths,
    links, headings, scripts and styles are left as they are."""
    out, skip, anchored, pending = [], [], set(), []
    def cite(m):
        lab = m.group(1)
        if lab not in labels: return m.group(0)
        return f'<a href="{"" if labels[lab] == page else labels[lab]}#eq-{lab}" class="eq-ref">{m.group(0)}</a>'
    tokens = list(_tokens(text))
    for i, (t, tag, closing) in enumerate(tokens):
        if tag == '!': out.append(t); continue
        if not tag: out.append(t if skip else EQ_REF_RE.sub(cite, t)); continue
        if not closing and tag == 'span' and re.search(r'class="[^"]*\bmath\b', t):
            inner = tokens[i + 1][0] if i + 1 < len(tokens) and not tokens[i + 1][1] else ''
            labs = [lab for lab in EQ_TAG_RE.findall(inner) if labels.get(lab) == page and lab not in anchored]
            anchored.update(labs)
            out.extend(f'<span id="eq-{lab}" class="eq-label"></span>' for lab in labs)
            skip.append('math'); pending = labs if re.search(r'class="[^"]*\bdisplay\b', t) else []
            out.append(t); continue
        out.append(t)
        if not closing and tag in NO_LINKS and not t.endswith('/>'): skip.append(tag)
        elif closing and skip and (skip[-1] == tag or (skip[-1] == 'math' and tag == 'span')):
            if skip.pop() == 'math' and pending:
                out.extend(uses_line(page, lab, users or {}, cells or {}) for lab in pending); pending = []
    return ''.join(out)

def equation_links(out:Path, nbs:Path) -> tuple[list[str], list[str]]:
    "Anchor every labelled formula of the site, say what computes and cites it, link every citation. Notes, problems."
    labels, problems = equation_labels(nbs)
    pages = sorted(out.glob('*.html'))
    users, cells = equation_users(), code_citations(pages)
    n = 0
    for page in pages:
        text = page.read_text(encoding='utf-8')
        new = link_equations(page.name, text, labels, users, cells)
        if new != text: page.write_text(new, encoding='utf-8'); n += 1
    missing = [f"{p}: the formula labelled (eq. {lab}) has no anchor on its page" for lab, p in labels.items()
               if (out/p).exists() and f'id="eq-{lab}"' not in (out/p).read_text(encoding='utf-8')]
    return [f"{len(labels)} formula labels anchored, their citations linked on {n} page(s)"], problems + missing

# ------------------------------------------------------------------ 5. check

# Elements and attributes whose address the browser fetches by itself, when the page loads
FETCHED = {'script': ('src',), 'img': ('src', 'srcset'), 'iframe': ('src',), 'source': ('src', 'srcset'),
           'video': ('src', 'poster'), 'audio': ('src',), 'embed': ('src',), 'object': ('data',), 'track': ('src',),
           'input': ('src',), 'link': ('href',)}
NOT_FETCHED_RELS = {'canonical', 'alternate', 'author', 'license', 'me', 'bookmark'}
EXTERNAL_RE = re.compile(r'^(?:[a-zA-Z][\w+.-]*:)?//')
CSS_EXTERNAL_RE = re.compile(r'(?:@import\s+|url\(\s*)["\']?(?:https?:)?//', re.I)
MODULE_IMPORT_RE = re.compile(r'(?:\bfrom\s*|\bimport\s*\(?\s*)["\'](?:https?:)?//', re.I)

class PageParser(html.parser.HTMLParser):
    "Collect a page's ids, links, fetched addresses, inline scripts and styles."
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids, self.links, self.fetched, self.inline = set(), [], [], []
        self.api = {}                      # API entries: heading text (the name) -> its id, first one per name
        self._in, self._divs, self._h = None, [], None
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == 'div': self._divs.append('cell-output' in (a.get('class') or '').split())
        # an API entry is a heading in a cell's output (what show_doc writes); a section heading of the same text is not
        if tag in ('h2', 'h3', 'h4', 'h5') and any(self._divs) and (a.get('id') or a.get('data-anchor-id')):
            self._h = (tag, a.get('id') or a.get('data-anchor-id'), [])
        for k in ('id', 'name') if tag == 'a' else ('id',):
            if a.get(k): self.ids.add(a[k])
        if tag == 'a' and a.get('href') is not None: self.links.append(a['href'])
        if tag == 'link' and NOT_FETCHED_RELS & set((a.get('rel') or '').lower().split()):
            if a.get('href'): self.links.append(a['href'])
        else:
            for k in FETCHED.get(tag, ()):
                v = a.get(k)
                if not v: continue
                for u in ([s.strip().split()[0] for s in v.split(',') if s.strip()] if k == 'srcset' else [v]):
                    self.fetched.append((tag, u))
        if tag in ('script', 'style'): self._in = tag
        for k, v in a.items():
            if k == 'style' and v: self.inline.append(('style', v))
    def handle_endtag(self, tag):
        if tag == self._in: self._in = None
        if tag == 'div' and self._divs: self._divs.pop()
        if self._h and tag == self._h[0]:
            self.api.setdefault(''.join(self._h[2]).strip(), self._h[1]); self._h = None
    def handle_data(self, data):
        if self._in: self.inline.append((self._in, data))
        if self._h: self._h[2].append(data)

def parse(page:Path) -> PageParser:
    p = PageParser(); p.feed(page.read_text(encoding='utf-8')); p.close()
    return p

HREF_RE = re.compile(r'(<a\b[^>]*\bhref=")([^"#]*)#([^"]+)(")')

def method_anchors(out:Path) -> list[str]:
    "Point links to a method with no API entry of its own (`#learner.fit`) at its class's entry. Returns notes."
    pages = [p for p in out.rglob('*.html') if 'site_libs' not in p.relative_to(out).parts]
    ids = {p.resolve(): parse(p).ids for p in pages}
    notes = set()
    for page in pages:
        text = page.read_text(encoding='utf-8')
        def fix(m):
            path, frag = unquote(m.group(2)), unquote(m.group(3))
            target = (page.parent/path).resolve() if path else page.resolve()
            have = ids.get(target)
            if have is None or frag in have or '.' not in frag: return m.group(0)
            owner = frag.rsplit('.', 1)[0]
            if owner not in have: return m.group(0)
            notes.add(f"{target.name}#{frag} has no API entry (show_doc) of its own: its links go to #{owner}")
            return f'{m.group(1)}{m.group(2)}#{owner}{m.group(4)}'
        new = HREF_RE.sub(fix, text)
        if new != text: page.write_text(new, encoding='utf-8')
    return sorted(notes)

# a link whose text is a name in code: <a href="page.html#frag"><code>NAME</code></a>
API_LINK_RE = re.compile(r'(<a\b[^>]*\bhref=")([^"#]*)#([^"]+)("[^>]*>\s*<code>)([^<]+)(</code>)')

def api_target(api:dict, name:str) -> str | None:
    "The id of NAME's API entry on a page, or of its class's entry for a method without one of its own."
    if name in api: return api[name]
    return api.get(name.rsplit('.', 1)[0]) if '.' in name else None

def api_links(out:Path, fix:bool=True) -> list[str]:
    """Links to API names whose #anchor is another heading: ids ignore case, so `relu` and `ReLU`, or a section titled
    "ReLU", share `#relu`, and the renderer numbers the others (`#relu-1`, `#relu-2`). With `fix`, each such link is
    pointed at the entry whose heading is exactly its name; returns what it changed (or, without `fix`, what is
    wrong)."""
    import html as html_mod
    pages = [p for p in out.rglob('*.html') if 'site_libs' not in p.relative_to(out).parts]
    api = {p.resolve(): parse(p).api for p in pages}
    found = []
    for page in pages:
        text = page.read_text(encoding='utf-8')
        def repl(m):
            path, frag, name = unquote(m.group(2)), unquote(m.group(3)), html_mod.unescape(m.group(5)).strip()
            target = (page.parent/path).resolve() if path else page.resolve()
            want = api_target(api.get(target, {}), name)
            if want is None or want == frag: return m.group(0)
            found.append(f"{page.name}: the link to `{name}` pointed at {target.name}#{frag}, its API entry is #{want}")
            return f'{m.group(1)}{m.group(2)}#{want}{m.group(4)}{m.group(5)}{m.group(6)}'
        new = API_LINK_RE.sub(repl, text)
        if fix and new != text: page.write_text(new, encoding='utf-8')
    return found

def external_refs(out:Path) -> list[str]:
    "Every address on another host that a page of the site (or one of its stylesheets) would load."
    bad = []
    for page in sorted(out.rglob('*.html')):
        rel, p = page.relative_to(out).as_posix(), parse(page)
        bad += [f"{rel}: <{tag}> loads {u}" for tag, u in p.fetched if EXTERNAL_RE.match(u)]
        for kind, text in p.inline:
            if (MODULE_IMPORT_RE if kind == 'script' else CSS_EXTERNAL_RE).search(text):
                bad.append(f"{rel}: an inline <{kind}> loads from another host: {text.strip()[:120]}")
    for css in sorted(out.rglob('*.css')):
        for m in CSS_EXTERNAL_RE.finditer(css.read_text(encoding='utf-8', errors='replace')):
            bad.append(f"{css.relative_to(out).as_posix()}: loads from another host near {m.group(0)!r}")
    return bad

def broken_links(out:Path, site_url:str='') -> list[str]:
    "Every internal link, search entry or local file a page points at that is not in the site, #anchors included."
    parsed = {page: parse(page) for page in out.rglob('*.html')}
    ids = {page.resolve(): p.ids for page, p in parsed.items()}
    bad = []
    def check(src:Path, href:str, what:str):
        if not href: return
        if site_url and href.startswith(site_url.rstrip('/') + '/'):
            bad.append(f"{src.relative_to(out).as_posix()}: {what} {href} points at the published site, "
                       "not at this copy")
            return
        if EXTERNAL_RE.match(href) or re.match(r'^[a-zA-Z][\w+.-]*:', href): return  # another host; mailto:, data:
        u = urlsplit(href)
        path, frag = unquote(u.path), unquote(u.fragment)
        target = (src.parent/path).resolve() if path else src.resolve()
        if path.endswith('/') or target.is_dir(): target = target/'index.html'
        if out.resolve() not in target.parents and target != out.resolve():
            bad.append(f"{src.relative_to(out).as_posix()}: {what} {href} leaves the site"); return
        if not target.exists():
            bad.append(f"{src.relative_to(out).as_posix()}: {what} {href} is missing"); return
        if frag and target.suffix == '.html' and frag not in ids.get(target, set()):
            bad.append(f"{src.relative_to(out).as_posix()}: {what} {href}: no #{frag} on that page")
    for page, p in sorted(parsed.items()):
        for href in p.links: check(page, href, 'link')
        for tag, u in p.fetched: check(page, u, f'<{tag}>')
    search = out/'search.json'
    if search.exists():
        for entry in json.loads(search.read_text(encoding='utf-8')):
            check(search, entry.get('href', ''), 'search entry')
    return bad

def missing_pages(out:Path, nbs:Path) -> list[str]:
    "Notebooks that have no page in the site."
    return [f"{nb.as_posix()} has no page {page_name(nb)}" for nb in notebooks(nbs) if not (out/page_name(nb)).exists()]

def missing_api(out:Path) -> list[str]:
    "Exported names (each module's `__all__`) whose API entry (`show_doc`, nbdev's doc link) is not in the site."
    import importlib
    from lepton_nb._modidx import d
    bad, entries = [], {}
    for mod, syms in d['syms'].items():
        if not syms: continue
        names = set(getattr(importlib.import_module(mod), '__all__', []))
        for sym, (doc, _py) in syms.items():
            name = sym[len(mod)+1:]
            if name not in names: continue
            page = doc.partition('#')[0]
            f = out/page
            if not f.exists(): bad.append(f"{sym}: no page {page}"); continue
            if f not in entries: entries[f] = parse(f).api   # each page parsed once
            if name not in entries[f]: bad.append(f"{sym}: no API entry (its show_doc) on {page}")
    return bad

def check_site(out:Path, nbs:Path, site_url:str) -> list[str]:
    "Everything wrong with a built site, one line each."
    return (missing_pages(out, nbs) + missing_api(out) + external_refs(out) + broken_links(out, site_url)
            + [f"misdirected: {m}" for m in api_links(out, fix=False)])

# ------------------------------------------------------------------ the whole build

def build(renderer:str='auto', out:str|None=None) -> int:
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    from nbdev.config import get_config
    t0 = time.perf_counter()
    cfg = get_config()
    site_url = cfg.doc_host.rstrip('/') + '/' + cfg.doc_baseurl.strip('/')
    if renderer == 'auto': renderer = 'quarto' if shutil.which('quarto') else 'smalldocs'
    log("processing the notebooks into _proc/ (nbdev)")
    proc = process(cfg)
    prepare_pages(proc, cfg.nbs_path, site_url)
    notes = planned_links(cfg.nbs_path)
    log(f"rendering with {renderer}")
    built = proc/cfg.doc_path.name
    shutil.rmtree(built, ignore_errors=True)
    warnings = render_quarto(proc, cfg) if renderer == 'quarto' else render_smalldocs(proc, cfg)
    out = Path(out).resolve() if out else cfg.doc_path
    if out.exists() and any(out.iterdir()) and not (out/'site_libs').is_dir():
        raise SystemExit(f"build_docs: {out} is not empty and is not a built site; it would be replaced: "
                         "give another folder")
    shutil.rmtree(out, ignore_errors=True)
    shutil.move(str(built), str(out))
    eq_notes, eq_problems = equation_links(out, cfg.nbs_path)      # before the API links are checked: it adds some
    notes += make_offline(out) + eq_notes + method_anchors(out)
    moved = api_links(out)
    if moved: notes.append(f"{len(moved)} link(s) to API names pointed at another heading of the same id; "
                           "now at their API entries")
    problems = list(warnings or []) + eq_problems + check_site(out, cfg.nbs_path, site_url)
    for n in notes: log(f"note: {n}")
    for p in problems: log(f"problem: {p}")
    n = len(list(out.rglob('*.html')))
    where = os.path.relpath(out, ROOT)
    log(f"{'built' if not problems else 'built, with problems,'} {n} page(s) into {where}/ "
        f"with {renderer} in {time.perf_counter()-t0:.0f} s")
    return 1 if problems else 0

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--renderer', choices=['auto', 'quarto', 'smalldocs'], default='auto',
                    help='auto: Quarto where `quarto` is installed, else smalldocs')
    ap.add_argument('--out', help='the folder to write the site to (default: doc_path of settings.ini, _docs)')
    a = ap.parse_args()
    sys.exit(build(a.renderer, a.out and str(Path(a.out).resolve())))
