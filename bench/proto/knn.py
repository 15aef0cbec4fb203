"""kNN / similarity-weighted routers on honest splits: a prototype for issue 14 (not shipped).

Run from the repository root, with the data in ../shared/data (or $TRIAGE_DATA) and the encoder's
tokenizer.json in ~/.cache/triage/all-MiniLM-L6-v2 (scripts/fetch-embedding-model.sh):

    python3 bench/proto/knn.py models/static-minilm-64.bin ['VARIANT' ...]      # e.g. 'sw k256'
    SIF=1e-3 python3 bench/proto/knn.py models/static-minilm-64.bin 'sw k256'   # SIF token weights

A prompt's representation is the static embedding of triage_embed::static_embed (mean of the
WordPiece tokens' rows of the distilled table, L2-normalised; the WordPiece is re-implemented
here). Each variant predicts, for a scored prompt, a target averaged over its k most similar
training prompts (cosine, weights max(sim, 0), shrunk to the training mean with weight 1):

  pair   the standardised gain z(strong) - z(weak) on training prompts that have both models
  pairc  the same, centred and scaled per training dataset (a dataset's mean gap removed)
  sw     RouteLLM's similarity-weighted ranking: z(strong) and z(weak) each predicted from the
         neighbours that have that model; score = difference
  wfail  -z(weak): how badly the weak model does on similar prompts
  diff   -(mean over models of z(m) - ability(m)): how much harder than usual for every model
  slope  the prompt's discrimination: slope of z(m) on the models' abilities

Qualities are standardised per dataset (mean 0, sd 1 over its cells). Splits as triage eval:
leave-dataset-out (train on every other set; prompts of the scored set dropped from the others)
and grouped-5-fold (triage-eval's grouped_folds; the other folds of the set join the training
rows). The output is trapezoid APGR (random = 0.500) per cell, LDO/G5F.
"""
import os, sys, time, json
import numpy as np
from data import load, canonical, Static

from data import D
A = f'{D}/alpaca-eval'
SETS = {'mmlu': 'mmlu', 'gsm8k': 'gsm8k', 'mt-bench': 'mt-bench', 'arena-bench': 'arena-bench',
        'ae2': f'{A}/alpaca_eval2.jsonl', 'ae1': f'{A}/alpaca_eval1.jsonl', 'ae2cot': f'{A}/alpaca_eval2_cot_fn.jsonl'}
MIX, G4 = 'mixtral-8x7b-instruct-v0.1', 'gpt-4-1106-preview'
CELLS = [('mmlu', MIX, G4), ('gsm8k', MIX, G4), ('mt-bench', MIX, G4),
         ('ae2', 'claude-instant-1.2', G4), ('ae2', 'gpt-3.5-turbo-1106', G4), ('ae2cot', MIX, G4)]


def prepare(static, weights=None):
    out = {}
    for k, path in SETS.items():
        items = load(path)
        models = sorted({m for it in items for m in it['q']})
        Q = np.full((len(items), len(models)), np.nan)
        for i, it in enumerate(items):
            for m, v in it['q'].items():
                Q[i, models.index(m)] = v
        # reference column: constant over items
        ref = [j for j in range(len(models)) if np.all(Q[:, j] == Q[0, j])]
        ids = [static.ids(it['prompt']) for it in items]
        E = np.stack([static.embed_ids(x, weights) for x in ids])
        L = np.log1p(np.array([len(x) for x in ids], float))
        out[k] = dict(items=items, models=models, Q=Q, ref=ref, E=E.astype(np.float32), L=L,
                      text=[it['prompt'].strip() for it in items], groups=[it['group'] for it in items])
    return out


def targets(s, rows):
    """Per-row targets on the training rows of set s: standardised quality Z (rows x models),
    per-model ability a, discrimination slope and residual difficulty."""
    Q = s['Q'][rows].copy()
    Qn = Q.copy()
    for j in s['ref']:
        Qn[:, j] = np.nan
    vals = Qn[np.isfinite(Qn)]
    mu, sd = vals.mean(), max(vals.std(), 1e-9)
    Z = (Q - mu) / sd
    Zn = (Qn - mu) / sd
    a = np.nanmean(Zn, axis=0)
    a = np.where(np.isfinite(a), a, 0.0)
    ok = np.isfinite(Zn)
    R = np.where(ok, Zn - a, np.nan)
    diff = -np.nanmean(R, axis=1)  # harder than usual for everyone -> positive
    # slope of Z on a within the row (discrimination); needs >= 2 models
    slope = np.full(len(rows), np.nan)
    for i in range(len(rows)):
        m = ok[i]
        if m.sum() >= 2:
            x = a[m] - a[m].mean(); y = Zn[i, m]
            v = (x * x).sum()
            if v > 1e-9:
                slope[i] = (x * y).sum() / v
    return Z, a, slope, diff


def gfolds(groups, k=5):
    sizes = {}
    for g in groups:
        sizes[g] = sizes.get(g, 0) + 1
    order = sorted(sizes.items(), key=lambda x: (-x[1], x[0]))
    load = [0] * k; fold = {}
    for g, n in order:
        f = min(range(k), key=lambda f: (load[f], f))
        load[f] += n; fold[g] = f
    return [fold[g] for g in groups]


def apgr(scores, w, s):
    n = len(scores)
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    tot = w.sum(); q = [tot / n]
    for i in order:
        tot += s[i] - w[i]; q.append(tot / n)
    qw, qs = q[0], q[-1]
    pts = [(q[int(round(i / 10 * n))] - qw) / (qs - qw) for i in range(11)]
    return sum(0.1 * (pts[i] + pts[i + 1]) / 2 for i in range(10))


def knn_predict(Eq, Et, y, k=32, alpha=1.0, prior=None):
    """similarity-weighted mean of y over the k nearest training rows (cosine), shrunk to prior."""
    ok = np.isfinite(y)
    Et, y = Et[ok], y[ok]
    if prior is None:
        prior = y.mean()
    S = Eq @ Et.T
    k = min(k, S.shape[1])
    idx = np.argpartition(-S, k - 1, axis=1)[:, :k]
    sims = np.take_along_axis(S, idx, 1)
    w = np.maximum(sims, 0)
    return ((w * y[idx]).sum(1) + alpha * prior) / (w.sum(1) + alpha)


def train_rows(P, ev, split, fold_items, folds, f):
    """training (set, rows) list for scoring fold f of set ev."""
    scored = {P[ev]['text'][i] for i, g in zip(fold_items, folds) if g == f}
    out = []
    for k, s in P.items():
        if k == ev:
            if split == 'g5f':
                rows = [i for i, g in zip(fold_items, folds) if g != f and s['text'][i] not in scored]
                out.append((k, np.array(rows)))
            continue
        rows = np.array([i for i in range(len(s['items'])) if s['text'][i] not in scored])
        out.append((k, rows))
    return out


def run_cell(P, ev, weak, strong, split, variant):
    s = P[ev]
    wi, si = s['models'].index(weak), s['models'].index(strong)
    idx = [i for i in range(len(s['items'])) if np.isfinite(s['Q'][i, wi]) and np.isfinite(s['Q'][i, si])]
    folds = gfolds([s['groups'][i] for i in idx]) if split == 'g5f' else [0] * len(idx)
    scores = np.zeros(len(idx))
    for f in sorted(set(folds)):
        tr = train_rows(P, ev, split, idx, folds, f)
        q = [j for j, g in enumerate(folds) if g == f]
        Eq = s['E'][[idx[j] for j in q]]
        scores[q] = variant(P, tr, Eq, weak, strong)
    return apgr(list(scores), s['Q'][idx, wi], s['Q'][idx, si])


def collect(P, tr, kind, weak=None, strong=None):
    Es, ys = [], []
    for k, rows in tr:
        if len(rows) == 0:
            continue
        s = P[k]
        Z, a, slope, diff = targets(s, rows)
        if kind == 'pair':
            if weak not in s['models'] or strong not in s['models']:
                continue
            y = Z[:, s['models'].index(strong)] - Z[:, s['models'].index(weak)]
        elif kind == 'pairc':
            if weak not in s['models'] or strong not in s['models']:
                continue
            y = Z[:, s['models'].index(strong)] - Z[:, s['models'].index(weak)]
            fin = np.isfinite(y)
            if fin.sum() < 2:
                continue
            y = (y - y[fin].mean()) / max(y[fin].std(), 1e-9)
        elif kind.startswith('model:'):
            m = weak if kind == 'model:weak' else strong
            if m not in s['models']:
                continue
            y = Z[:, s['models'].index(m)]
            if kind == 'model:weak':
                y = -y
        elif kind == 'slope':
            y = slope
        elif kind == 'diff':
            y = diff
        Es.append(s['E'][rows]); ys.append(y)
    if not Es:
        return None, None
    return np.concatenate(Es), np.concatenate(ys)


def v_sw(k=64, alpha=1.0):
    """RouteLLM-style SW ranking: each model's standardised quality predicted by the
    similarity-weighted mean over the nearest training prompts that have that model."""
    def f(P, tr, Eq, weak, strong):
        out = np.zeros(len(Eq))
        for kind, sign in (('model:strong', 1), ('model:weak', 1)):
            Et, y = collect(P, tr, kind, weak, strong)
            if Et is not None and np.isfinite(y).sum() > 0:
                out += sign * knn_predict(Eq, Et, y, k, alpha)
        return out
    return f


def v_knn(kind, k=32, alpha=1.0):
    def f(P, tr, Eq, weak, strong):
        Et, y = collect(P, tr, kind, weak, strong)
        if Et is None or np.isfinite(y).sum() == 0:
            return np.zeros(len(Eq))
        return knn_predict(Eq, Et, y, k, alpha)
    return f


if __name__ == '__main__':
    binp = sys.argv[1] if len(sys.argv) > 1 else 'models/static-minilm-64.bin'
    st = Static(binp)
    t = time.time()
    weights = None
    if os.environ.get('SIF'):
        # SIF weights a / (a + p(token)) from token frequencies over every prompt of every set
        # (text only, no labels), as Model2Vec weights its tokens.
        counts = np.zeros(len(st.table))
        for k, path in SETS.items():
            for it in load(path):
                np.add.at(counts, st.ids(it['prompt']), 1)
        pr = counts / counts.sum()
        a = float(os.environ['SIF'])
        weights = (a / (a + pr)).astype(np.float32)
    P = prepare(st, weights)
    print(f'prepared in {time.time()-t:.0f}s', file=sys.stderr)
    variants = {k: v for k, v in {
        'pair k32': v_knn('pair', 32), 'pair k128': v_knn('pair', 128),
        'pairc k32': v_knn('pairc', 32), 'pairc k128': v_knn('pairc', 128),
        'slope k128': v_knn('slope', 128),
        'sw k64': v_sw(64), 'sw k256': v_sw(256),
        'wfail k64': v_knn('model:weak', 64), 'wfail k256': v_knn('model:weak', 256),
        'diff k128': v_knn('diff', 128),
    }.items() if len(sys.argv) < 3 or k in sys.argv[2:]}
    print('variant', *[f'{c[0]}:{c[1][:8]}' for c in CELLS], sep='\t')
    for name, v in variants.items():
        row = []
        for ev, w, s in CELLS:
            r = []
            for split in ('ldo', 'g5f'):
                try:
                    r.append(f'{run_cell(P, ev, w, s, split, v):.3f}')
                except Exception as e:
                    r.append('err')
            row.append('/'.join(r))
        print(name, *row, sep='\t', flush=True)
