"""Prototype loaders and static embedding for router experiments (mirrors triage-eval's data.rs)."""
import csv, json, os, re, struct, sys, unicodedata
import numpy as np

D = os.environ.get('TRIAGE_DATA', '../shared/data')
csv.field_size_limit(10**9)


def canonical(name):
    base = name.rsplit('/', 1)[-1].lower().replace('_', '-')
    if base.startswith('gpt4') and (len(base) == 4 or base[4] == '-'):
        return 'gpt-4' + base[4:]
    return base


def pb(s):
    s = s.strip()
    return 1.0 if s in ('True', 'true', '1', '1.0') else 0.0 if s in ('False', 'false', '0', '0.0') else float('nan')


def contaminated(path):
    out = set()
    if os.path.exists(path):
        for l in open(path):
            if l.strip():
                out.add(json.loads(l)['eval_prompt'].strip())
    return out


def load_csvs(files, groupf):
    items, models = [], None
    for f in files:
        rd = csv.reader(open(f, newline=''))
        head = next(rd)
        cols = [(i, h) for i, h in enumerate(head) if i > 0 and not h.endswith('_response')]
        models = [h for _, h in cols]
        for n, rec in enumerate(rd):
            items.append(dict(prompt=rec[0], group=groupf(f, n), q={h: pb(rec[i]) for i, h in cols}))
    return items


def load(name, drop=True):
    if name == 'mmlu':
        dd = f'{D}/routellm/mmlu'
        files = sorted(os.path.join(dd, f) for f in os.listdir(dd) if f.endswith('.csv'))
        items = load_csvs(files, lambda f, n: os.path.basename(f)[:-4].removeprefix('mmlu_'))
        bad = contaminated(f'{dd}/contaminated_prompts.jsonl')
    elif name == 'gsm8k':
        dd = f'{D}/routellm/gsm8k'
        items = load_csvs([f'{dd}/gsm8k_responses.csv'], lambda f, n: f'gsm8k/{n}')
        bad = contaminated(f'{dd}/contaminated_prompts.jsonl')
    elif name == 'mt-bench':
        dd = f'{D}/routellm/mt_bench'
        qs = [json.loads(l) for l in open(f'{dd}/question.jsonl') if l.strip()]
        sums = {}
        for l in open(f'{dd}/judgements.jsonl'):
            if not l.strip():
                continue
            j = json.loads(l)
            if j['score'] >= 1:
                s = sums.setdefault((j['question_id'], j['model']), [0, 0])
                s[0] += j['score']; s[1] += 1
        items = []
        for q in qs:
            qq = {m: s / n for (qid, m), (s, n) in sums.items() if qid == q['question_id'] and n > 0}
            items.append(dict(prompt=q['turns'][0], group=q['category'], q=qq))
        bad = contaminated(f'{dd}/contaminated_prompts.jsonl')
    elif name == 'arena-bench':
        items = []
        for l in open(f'{D}/arena-bench/arena_bench_v1.jsonl'):
            r = json.loads(l)
            items.append(dict(prompt=r['prompt'], group=r['question_id'],
                              q={m: v for m, v in r['scores'].items() if v is not None}))
        bad = set()
    else:
        items = []
        for i, l in enumerate(open(name)):
            if not l.strip():
                continue
            r = json.loads(l)
            iid = r.get('id', str(i + 1))
            items.append(dict(prompt=r['prompt'], group=r.get('group') or iid, q=r['quality']))
        bad = set()
    if drop:
        items = [it for it in items if it['prompt'].strip() not in bad]
    for it in items:
        it['q'] = {canonical(m): v for m, v in it['q'].items() if v == v}
    return items


# ---- static embedding -------------------------------------------------------------------

class Static:
    def __init__(self, bin_path, tok_path=os.path.expanduser('~/.cache/triage/all-MiniLM-L6-v2/tokenizer.json')):
        b = open(bin_path, 'rb').read()
        assert b[:10] == b'TRSTATIC1\0'
        v, d = struct.unpack('<II', b[10:18])
        rec = np.frombuffer(b[18:], dtype=np.uint8).reshape(v, 4 + d)
        scale = rec[:, :4].copy().view('<f4').reshape(v)
        tab = rec[:, 4:].copy().view(np.int8).astype(np.float32)
        self.table = tab * scale[:, None]
        self.dim = d
        tj = json.load(open(tok_path))
        self.vocab = tj['model']['vocab']
        self.unk = self.vocab['[UNK]']
        self.maxc = tj['model']['max_input_chars_per_word']
        self.cache = {}

    def words(self, text):
        out = []
        text = ''.join(' ' if c in '\t\n\r' or unicodedata.category(c) == 'Zs' else c for c in text
                       if not (ord(c) == 0 or ord(c) == 0xfffd or (unicodedata.category(c).startswith('C') and c not in '\t\n\r')))
        text = unicodedata.normalize('NFD', text.lower())
        text = ''.join(c for c in text if unicodedata.category(c) != 'Mn')
        for w in text.split():
            cur = ''
            for c in w:
                o = ord(c)
                punct = (33 <= o <= 47 or 58 <= o <= 64 or 91 <= o <= 96 or 123 <= o <= 126
                         or unicodedata.category(c).startswith('P') or 0x4E00 <= o <= 0x9FFF)
                if punct:
                    if cur:
                        out.append(cur); cur = ''
                    out.append(c)
                else:
                    cur += c
            if cur:
                out.append(cur)
        return out

    def ids(self, text):
        ids = []
        for w in self.words(text):
            if w in self.cache:
                ids.extend(self.cache[w]); continue
            if len(w) > self.maxc:
                r = [self.unk]
            else:
                r, start, bad = [], 0, False
                while start < len(w):
                    end = len(w); cur = None
                    while start < end:
                        sub = w[start:end] if start == 0 else '##' + w[start:end]
                        if sub in self.vocab:
                            cur = self.vocab[sub]; break
                        end -= 1
                    if cur is None:
                        bad = True; break
                    r.append(cur); start = end
                if bad:
                    r = [self.unk]
            self.cache[w] = r
            ids.extend(r)
        return ids

    def embed_ids(self, ids, weights=None):
        if not ids:
            return np.zeros(self.dim, np.float32)
        rows = self.table[ids]
        if weights is not None:
            rows = rows * weights[ids][:, None]
        v = rows.sum(0)
        n = np.linalg.norm(v)
        return v / n if n > 0 else v
