"""The documentation site: built from the notebooks by `make docs`'s script, then read offline in headless Chromium.

The site is built once for the module (smalldocs, the renderer of machines without Quarto, as in CI) into a
temporary folder. Screenshots are kept in `test_artifacts/`."""
import importlib.util, json, os, re, subprocess, sys
from pathlib import Path

import pytest

from chromium import Browser, find_chromium, serve
from helpers import ROOT

ARTIFACTS = ROOT/'test_artifacts'
NBS = ROOT/'nbs'

spec = importlib.util.spec_from_file_location('build_docs', ROOT/'scripts'/'build_docs.py')
B = importlib.util.module_from_spec(spec); spec.loader.exec_module(B)


def site_url():
    from nbdev.config import get_config
    cfg = get_config(path=ROOT)
    return cfg.doc_host.rstrip('/') + '/' + cfg.doc_baseurl.strip('/')


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "The site, built as `make docs` builds it, into a temporary folder."
    out = tmp_path_factory.mktemp('site')/'_docs'
    r = subprocess.run([sys.executable, 'scripts/build_docs.py', '--renderer', 'smalldocs', '--out', str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    print(r.stderr.strip().splitlines()[-1])   # "built 14 page(s) ... in N s": a time to read, not to test
    return out


@pytest.fixture(scope='module')
def browser():
    if find_chromium() is None:
        if os.environ.get('LEPTON_NO_BROWSER'): pytest.skip('LEPTON_NO_BROWSER is set and there is no chromium')
        pytest.fail('no chromium: `make system-deps` as root, or `apt-get install chromium`, or set $CHROMIUM '
                    '(LEPTON_NO_BROWSER=1 skips the browser tests)')
    with Browser() as b: yield b


@pytest.fixture(scope='module')
def served(site):
    with serve(site) as s: yield s


def nb_title(nb: Path) -> str:
    "The title of a notebook: its first `# ` heading."
    for c in json.loads((NBS/nb).read_text(encoding='utf-8'))['cells']:
        m = re.match(r'#\s+(.+)', ''.join(c['source']).strip()) if c['cell_type'] == 'markdown' else None
        if m: return re.sub(r'[`*]', '', m.group(1)).strip()  # as text, without Markdown's marks


def math_page(site: Path) -> str:
    "The activations page once its notebook exists; until then the first page with display maths."
    act = sorted(NBS.glob('*activations*.ipynb'))
    if act: return B.page_name(act[0].relative_to(NBS))
    return next(B.page_name(nb) for nb in B.notebooks(NBS)
                if 'class="math display"' in (site/B.page_name(nb)).read_text())


def load(page, url, ready="true", timeout=30):
    "Open a page, wait until `ready` (JavaScript) holds and late scripts have run."
    page.goto(url)
    page.wait_for(ready, timeout, what=f'{url}: {ready}')
    page.settle(0.3)


# The page is ready when KaTeX has typeset every formula and mermaid has drawn every diagram
READY = ("document.readyState === 'complete' && "
         "[...document.querySelectorAll('.math')].every(e => e.querySelector('.katex, .katex-error')) && "
         "[...document.querySelectorAll('pre.mermaid')].every(e => e.querySelector('svg'))")


# ------------------------------------------------------------------ the build, without a browser

def test_one_quarto_config():
    "nbdev, Quarto and smalldocs all read the top-level _quarto.yml: nbs/_quarto.yml is a link to it."
    link = NBS/'_quarto.yml'
    assert link.is_symlink() and link.resolve() == (ROOT/'_quarto.yml').resolve()
    assert 'metadata-files: [nbdev.yml, sidebar.yml]' in (ROOT/'_quarto.yml').read_text()


def test_every_notebook_has_a_page_and_api(site):
    assert B.missing_pages(site, NBS) == []
    assert B.missing_api(site) == []
    import importlib
    from lepton_nb._modidx import d
    exported = sum(len(getattr(importlib.import_module(m), '__all__', [])) for m, syms in d['syms'].items() if syms)
    assert exported > 10, 'missing_api looked at the exported names'
    # a page is named as Quarto names it, so nbdev's links from API names hold on both renderers
    assert (site/'core.html').exists() and not (site/'00_core.html').exists()


def test_no_external_address_and_no_broken_link(site):
    assert B.external_refs(site) == []
    assert B.broken_links(site, site_url()) == []
    for page in site.rglob('*.html'):
        text = page.read_text(encoding='utf-8')
        assert not re.search(r'<(script|link)\b[^>]*(src|href)="(https?:)?//', text), page.name
        hrefs = ' '.join(re.findall(r'href="([^"]*)"', text))
        assert site_url() not in hrefs, f'{page.name}: a link to the published site'
    libs = site/'site_libs'
    assert (libs/'katex'/'katex.min.js').is_file() and (libs/'mermaid'/'mermaid.min.js').is_file()
    assert list((libs/'katex'/'fonts').glob('*.woff2'))


def test_api_links_point_at_pages_here(site):
    "Backtick links to API names (nbdev's doc links) lead to the page and anchor of this site."
    html = (site/'data.html').read_text(encoding='utf-8')
    links = re.findall(r'<a href="([^"]+)"><code>', html)
    assert any(l.split('#')[0] not in ('', 'data.html') and '#' in l for l in links), links[:20]   # another page
    assert all(not l.startswith('http') for l in links if l.split('#')[0].endswith('.html')), links


def test_api_links_land_on_the_entry_of_their_name(site):
    "Ids ignore case (`relu`, `ReLU` and a section 'ReLU' share #relu): each link to a name lands on that name's entry."
    assert B.api_links(site, fix=False) == []
    api = B.parse(site/'activations.html').api
    assert {'relu', 'ReLU', 'sigmoid', 'Sigmoid'} <= set(api) and len({api['relu'], api['ReLU']}) == 2
    html = (site/'activations.html').read_text(encoding='utf-8')
    assert f'href="activations.html#{api["ReLU"]}"><code>ReLU</code>' in html


def test_api_links_are_repointed(tmp_path):
    "A link whose anchor is a section heading or another name's entry is pointed at the entry of its own name."
    (tmp_path/'a.html').write_text(
        '<section id="relu"><h2 data-anchor-id="relu">ReLU</h2></section>'
        '<div class="cell-output"><h3 id="relu-1">relu</h3></div>'
        '<div class="cell-output"><div><h3 id="relu-2">ReLU</h3></div></div>'
        '<div class="cell-output"><h3 id="learner">Learner</h3></div>'
        '<a href="a.html#relu"><code>relu</code></a><a href="#relu"><code>ReLU</code></a>'
        '<a href="a.html#learner"><code>Learner.fit</code></a><a href="a.html#relu">the section</a>')
    assert B.parse(tmp_path/'a.html').api == {'relu': 'relu-1', 'ReLU': 'relu-2', 'Learner': 'learner'}
    assert len(B.api_links(tmp_path, fix=False)) == 2
    assert len(B.api_links(tmp_path)) == 2 and B.api_links(tmp_path, fix=False) == []
    a = (tmp_path/'a.html').read_text()
    assert 'href="a.html#relu-1"><code>relu<' in a and 'href="#relu-2"><code>ReLU<' in a
    assert 'href="a.html#learner"><code>Learner.fit<' in a and 'href="a.html#relu">the section<' in a


def test_signatures_read_as_python(site):
    "API entries: a class as `class`, `*args`/`**kw` as Python writes them, no `NoneType`, no markdown inside code."
    classes = B.class_names()
    assert {'Learner', 'LeptonError', 'Timer'} <= classes and 'get_device' not in classes
    for page in sorted(site.glob('*.html')):
        html = page.read_text(encoding='utf-8')
        for bad in ('VAR_POSITIONAL', 'VAR_KEYWORD', 'NoneType'): assert bad not in html, (page.name, bad)
        for code in re.findall(r'<code class="sourceCode python">(.*?)</code>', html, re.S):
            text = re.sub(r'<[^>]+>', '', code)
            assert not re.search(r'\[`[^`]+`\]\(', text), (page.name, text[:200])
            m = re.match(r'\s*def (\w+)\(', text)
            assert not (m and m.group(1) in classes), (page.name, m and m.group(1))
    core = (site/'core.html').read_text(encoding='utf-8')   # entries in the order of their definitions
    assert core.index('id="leptonerror"') < core.index('id="leptonwarning"')
    assert core.index('id="get_rng_states"') < core.index('id="set_rng_states"')


def test_signature_tidying():
    """`tidy_signature` on what this nbdev writes: a class, `**kw` with its comment after the return type, NoneType,
    a link."""
    md = ('### Thing\n\n```python\n\ndef Thing(\n'
          '    args:VAR_POSITIONAL, device:NoneType=None, # Where (None: [`get_device`](00_core.ipynb#get_device))\n'
          '    kw:VAR_KEYWORD\n)->dict: # Anything else\n\n\n```\n\n*Doc.*')
    out = B.tidy_signature(md, {'Thing'})
    assert ('class Thing(\n    *args, device=None, # Where (None: `get_device`)\n    **kw, # Anything else\n)->dict:\n'
            in out), out
    assert B.tidy_signature(md, set()).count('def Thing(') == 1
    cells = [{'cell_type': 'code', 'source': B.SHOW_DOC_SRC + f'{n})',
              'outputs': [{'data': {'text/markdown': f'[source](x.py#L{l})'}}]} for n, l in (('b', 20), ('a', 3))]
    assert B.in_source_order(cells) and [c['source'][-2] for c in cells] == ['a', 'b'] and not B.in_source_order(cells)


def test_no_widget_stand_ins(site):
    "Live widgets' text stand-ins (an `interactive(...)` repr, a tqdm bar frozen at 0%) are not on the static pages."
    saved = [nb for nb in B.notebooks(NBS) if B.WIDGET in (NBS/nb).read_text(encoding='utf-8')]
    assert len(saved) >= 3, saved                                   # the notebooks do save widget outputs
    for nb in saved:
        html = (site/B.page_name(nb)).read_text(encoding='utf-8')
        assert 'interactive(children=' not in html and not re.search(r'\b0%\|', html), nb


def test_plots_are_shown(site):
    "A notebook whose saved outputs have a picture shows pictures on its page."
    for nb in B.notebooks(NBS):
        cells = json.loads((NBS/nb).read_text(encoding='utf-8'))['cells']
        hidden = lambda c: re.search(r'#\|\s*(hide|include:\s*false|output:\s*false)', ''.join(c['source']))
        shown = sum(1 for c in cells if c['cell_type'] == 'code' and not hidden(c)
                    for o in c.get('outputs', []) if 'image/png' in o.get('data', {}))
        imgs = len(re.findall(r'<img\b', (site/B.page_name(nb)).read_text(encoding='utf-8')))
        assert imgs >= min(shown, 1), f'{nb}: {shown} saved picture(s), {imgs} <img> on the page'


def test_checks_find_what_is_wrong(tmp_path):
    "The build's checks fail on external scripts and stylesheets, web fonts, broken links and missing anchors."
    (tmp_path/'site_libs').mkdir()
    (tmp_path/'site_libs'/'t.css').write_text('@import url(https://fonts.example.org/css2?family=X:wght@300;400);body{}')
    (tmp_path/'a.html').write_text(
        '<html><head><script src="https://cdn.example.org/x.js"></script>'
        '<link rel="stylesheet" href="//cdn.example.org/x.css">'
        '<link rel="canonical" href="https://site.example.org/a.html">'
        '<script type="module">import m from "https://cdn.example.org/m.mjs"</script>'
        '</head><body><h2 id="here">x</h2><a href="b.html">b</a><a href="a.html#here">ok</a><a href="#nowhere">n</a>'
        '<a href="https://site.example.org/docs/a.html">self</a><a href="https://elsewhere.example.org/">fine</a>'
        '<img src="site_libs/missing.png"></body></html>')
    ext = B.external_refs(tmp_path)
    assert len(ext) == 4 and all(any(f in e for e in ext) for f in ('x.js', 'm.mjs', 't.css'))
    broken = B.broken_links(tmp_path, 'https://site.example.org/docs')
    assert len(broken) == 4, broken
    assert any('b.html is missing' in b for b in broken) and any('#nowhere' in b for b in broken)
    assert any('published site' in b for b in broken) and any('missing.png' in b for b in broken)
    # making it offline drops the web fonts and points KaTeX and mermaid at the copies in site_libs
    (tmp_path/'c.html').write_text('<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/katex@0.16.11/dist/katex.min.css">'
        "<script type=\"module\">import mermaid from 'https://cdn.jsdelivr.net/npm/mermaid@11.4.1/dist/mermaid.esm.min.mjs';mermaid.initialize({});</script>")
    B.make_offline(tmp_path)
    c = (tmp_path/'c.html').read_text()
    assert 'href="site_libs/katex/katex.min.css"' in c
    assert '<script src="site_libs/mermaid/mermaid.min.js"></script>' in c
    assert 'jsdelivr' not in c and 'fonts.example.org' not in (tmp_path/'site_libs'/'t.css').read_text()
    # a link to a method with no API entry of its own goes to its class's entry; an unknown anchor stays broken
    (tmp_path/'d.html').write_text('<h3 id="learner">Learner</h3><a href="d.html#learner.fit">fit</a>'
                                   '<a href="#nope.x">x</a>')
    assert B.method_anchors(tmp_path) == [
        'd.html#learner.fit has no API entry (show_doc) of its own: its links go to #learner']
    d = (tmp_path/'d.html').read_text()
    assert 'href="d.html#learner"' in d and 'href="#nope.x"' in d


def test_planned_notebooks_and_self_links(tmp_path):
    "Links to numbered notebooks not written yet become text; nbdev's absolute links become links to the notebook."
    nbs, proc = tmp_path/'nbs', tmp_path/'_proc'
    for d in (nbs, proc): d.mkdir()
    md = ('[00_a](00_a.ipynb) and [99_later](99_later.ipynb#x) and [`f`](https://site.example.org/docs/a.html#f)')
    nb = {'cells': [{'cell_type': 'raw', 'metadata': {}, 'source': '---\ntitle: A\n---\n'},
                    {'cell_type': 'markdown', 'metadata': {}, 'source': md}],
          'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}
    for d in (nbs, proc): (d/'00_a.ipynb').write_text(json.dumps(nb))
    B.prepare_pages(proc, nbs, 'https://site.example.org/docs')
    front, out = [c['source'] for c in json.loads((proc/'00_a.ipynb').read_text())['cells']]
    assert out == '[00_a](00_a.ipynb) and 99_later and [`f`](00_a.ipynb#f)'
    assert front == '---\norder: 0\ntitle: A\n---\n', 'the sidebar order, for both renderers'
    assert B.planned_links(nbs) == [
        '00_a.ipynb: 99_later.ipynb does not exist yet; its link is plain text until it does']



def test_formula_labels_link_both_ways(site):
    "A labelled formula has its anchor and the line of what computes and cites it; citations link to it, across pages."
    run = (site/'gan_run.html').read_text(encoding='utf-8')
    assert run.count('id="eq-fid"') == 1
    uses = re.search(r'id="eq-fid".*?<span class="eq-uses">(.*?)</span></p>', run, re.S).group(1)
    assert '<code>frechet_distance</code>' in uses and 'cited in code cells' in uses
    assert '<a href="#eq-fid" class="eq-ref">eq. fid</a>' in run                    # prose and docstrings, this page
    gan = (site/'gan.html').read_text(encoding='utf-8')
    assert '<a href="gan_losses.html#eq-loss-d" class="eq-ref">eq. loss-d</a>' in gan   # another page's formula
    metrics = (site/'metrics.html').read_text(encoding='utf-8')
    assert '<span id="eq-accuracy" class="eq-label"></span><span class="math inline">' in metrics
    for page in site.glob('*.html'):                                                   # never a link inside maths
        for m in re.finditer(r'<span class="math[^"]*">(.*?)</span>', page.read_text(encoding='utf-8'), re.S):
            assert '<a ' not in m.group(1), page.name


def test_formula_label_checks(tmp_path):
    """A label tagged on two pages, or cited with no formula that carries it, is a problem;
    maths, links, scripts are left alone."""
    def nb(name, *cells):
        cells = [{'cell_type': t, 'metadata': {}, 'source': s, **({'outputs': []} if t == 'code' else {})}
                 for t, s in cells]
        (tmp_path/name).write_text(json.dumps({'cells': cells, 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}))
    nb('01_a.ipynb', ('markdown', r'$$x \qquad \text{(eq. one)}$$ and $y \ \text{(eq. inline)}$, as (eq. typo) says'),
       ('code', 'f()  # (eq. gone)'))
    nb('02_b.ipynb', ('markdown', r'$$z \qquad \text{(eq. one)}$$ as (eq. inline) says'))
    labels, problems = B.equation_labels(tmp_path)
    assert labels == {'one': 'a.html', 'inline': 'a.html'}, labels
    assert problems == [r'a.html: (eq. gone) is cited, but no formula carries that label '
                        r'(\text{(eq. gone)} in its maths)',
                        r'a.html: (eq. typo) is cited, but no formula carries that label '
                        r'(\text{(eq. typo)} in its maths)',
                        'formula label (eq. one) is tagged on a.html and on b.html'], problems
    head = '<script>for (var i = 0; i < n.length; i++) { m(i); }</script>'     # as Quarto's pages have: '<', no '>'
    html = (head + '<p><span class="math display">\\[x \\qquad \\text{(eq. one)}\\]</span></p>'
            '<p title="a > b (eq. one)">'
            'see <span class="math inline">\\(y \\ \\text{(eq. inline)}\\)</span>, (eq. inline), '
            '<a href="x">eq. one</a>, '
            '<code>(eq. one)</code></p><h2 id="s">On (eq. one)</h2><script>var s = "eq. one";</script>')
    out = B.link_equations('a.html', html, labels, {'one': [('f', 'a.html#f')]}, {})
    assert out.startswith(head + '<p><span id="eq-one" class="eq-label"></span><span class="math display">\\[x \\qquad '
                          '\\text{(eq. one)}\\]</span>'
                          '<span class="eq-uses">computed by <a href="#f"><code>f</code></a></span>'
                          '</p><p title="a > b (eq. one)">see <span id="eq-inline" class="eq-label"></span>'
                          '<span class="math inline">\\(y \\ \\text{(eq. inline)}\\)</span>, '
                          '(<a href="#eq-inline" class="eq-ref">eq. inline</a>)'), out
    assert '<a href="x">eq. one</a>' in out and 'var s = "eq. one";' in out             # no link in a link or a script
    assert '<code>(<a href="#eq-one" class="eq-ref">eq. one</a>)</code>' in out         # code cites it too
    assert '<h2 id="s">On (eq. one)</h2>' in out  # nor in a heading (the contents)
    linked = B.link_equations('b.html', '(eq. inline)', labels)
    assert '<a href="a.html#eq-inline" class="eq-ref">eq. inline</a>' in linked

# ------------------------------------------------------------------ in the browser

def test_every_page_loads_offline_without_errors(site, served, browser):
    page = browser.new_page()
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob('*.html') if 'site_libs' not in p.parts)
    assert len(pages) == len(B.notebooks(NBS))
    for name in pages:
        load(page, served.url + name, READY)
        assert page.errors == [], f'{name}: {page.errors}'
        assert page.external == [], f'{name} reached for another host: {page.external}'
        # KaTeX is stricter than MathJax (JupyterLab's): `\eta_\max` must be written `\eta_{\max}`
        bad = page.eval("[...document.querySelectorAll('.katex-error')].map(e => e.textContent + ': ' + e.title)")
        assert bad == [], f'{name}: formulas KaTeX cannot typeset: {bad}'
    load(page, served.url + 'index.html', READY)
    page.screenshot(ARTIFACTS/'docs-index.png')


def test_sidebar_lists_every_notebook_in_order(site, served, browser):
    page = browser.new_page()
    load(page, served.url + 'index.html', READY)
    links = page.eval("[...document.querySelectorAll('#quarto-sidebar a[href]')]"
                      ".map(a => [a.getAttribute('href'), a.textContent.trim()])")
    nbs = B.notebooks(NBS)
    want = [B.page_name(nb) for nb in sorted(nbs, key=lambda p: (p.stem != 'index', p.as_posix()))]
    assert [re.sub(r'^\./', '', h) for h, _ in links] == want
    for (h, text), nb in zip(links, sorted(nbs, key=lambda p: (p.stem != 'index', p.as_posix()))):
        if nb.stem != 'index': assert text == nb_title(nb), (h, text)
    assert page.errors == []


def test_formula_is_typeset(site, served, browser):
    name = math_page(site)
    page = browser.new_page()
    load(page, served.url + name, READY)
    n = page.eval("""(() => {
        const maths = [...document.querySelectorAll('.math')];
        return {math: maths.length, katex: maths.filter(e => e.querySelector('.katex')).length,
                display: document.querySelectorAll('.math.display .katex-display').length,
                errors: document.querySelectorAll('.katex-error').length}; })()""")
    assert n['math'] > 0 and n['katex'] == n['math'] and n['display'] > 0 and n['errors'] == 0, n
    text = page.eval("""(() => { const b = document.querySelector('main') || document.body; const c = b.cloneNode(true);
        c.querySelectorAll('pre, code, .katex').forEach(e => e.remove()); return c.textContent; })()""")
    assert '$$' not in text and '\\[' not in text and '\\(' not in text, 'raw TeX left in the page'
    page.eval("document.querySelector('.math.display').scrollIntoView({block: 'center', behavior: 'instant'})")
    page.settle(0.3)
    page.screenshot(ARTIFACTS/f"docs-formula-{name.replace('.html', '')}.png")
    assert page.errors == [] and page.external == []


def test_mermaid_diagram_is_svg(site, served, browser):
    pages = [B.page_name(nb) for nb in B.notebooks(NBS) if 'class="mermaid"' in (site/B.page_name(nb)).read_text()]
    assert pages, 'the data notebook has a mermaid diagram'
    page = browser.new_page()
    for name in pages:
        load(page, served.url + name, READY)
        d = page.eval("""[...document.querySelectorAll('pre.mermaid')].map(e => {
            const s = e.querySelector('svg');
            return [!!s, s ? s.querySelectorAll('.node').length : 0, e.textContent.includes('Syntax error')]; })""")
        assert d and all(svg and nodes > 1 and not err for svg, nodes, err in d), (name, d)
    page.eval("document.querySelector('pre.mermaid').scrollIntoView({block: 'center', behavior: 'instant'})")
    page.settle(0.3)
    page.screenshot(ARTIFACTS/'docs-mermaid.png')
    assert page.errors == [] and page.external == []


def test_search_finds_an_api_name_and_leads_to_it(site, served, browser):
    import importlib
    from lepton_nb._modidx import d
    # the first exported name of the first module: its API entry is what the search should find
    name, doc = next((n, syms[f'{m}.{n}'][0]) for m, syms in d['syms'].items() if syms
                     for n in getattr(importlib.import_module(m), '__all__', []) if f'{m}.{n}' in syms)
    target = doc.split('#')
    page = browser.new_page()
    load(page, served.url + 'index.html', READY)
    page.click('.smalldocs-search input')
    page.type(name)
    hrefs = page.wait_for("(() => { const a = [...document.querySelectorAll('.smalldocs-search-results a')]; "
                          "return a.length ? a.map(x => x.getAttribute('href')) : null; })()", 10,
                          what=f'search results for {name}')
    want = f'{target[0]}#{target[1]}'
    assert any(h.endswith(want) for h in hrefs), (name, want, hrefs)
    page.click(f'.smalldocs-search-results a[href$="{want}"]')
    page.wait_for(f"location.pathname.endsWith('/{target[0]}') && location.hash === '#{target[1]}'", 10,
                  what='the result opens')
    page.wait_for(f"!!document.getElementById({json.dumps(target[1])})", 10)
    assert page.errors == [] and page.external == []
