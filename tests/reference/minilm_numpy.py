# An independent numpy forward pass of all-MiniLM-L6-v2 (BERT, exact erf GELU, mean pooling over
# the tokens, L2 norm; first 128 tokens), in float64: the reference values of
# crates/triage-embed/tests/encoder.rs come from it.
#   python3 -m venv /tmp/ref && /tmp/ref/bin/pip install numpy safetensors tokenizers
#   /tmp/ref/bin/python tests/reference/minilm_numpy.py ~/.cache/triage/all-MiniLM-L6-v2 "TEXT"...
# prints, per text, the first 8 components and the sum of all 384.
import sys, json, math
import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer
d = sys.argv[1]
W = load_file(f"{d}/model.safetensors")
cfg = json.load(open(f"{d}/config.json"))
tok = Tokenizer.from_file(f"{d}/tokenizer.json")
tok.no_padding(); tok.enable_truncation(128)
def g(n):
    for p in (n, "bert."+n):
        if p in W: return W[p].astype(np.float64)
    raise KeyError(n)
def ln(x, p):
    m = x.mean(-1, keepdims=True); v = ((x-m)**2).mean(-1, keepdims=True)
    return (x-m)/np.sqrt(v+1e-12)*g(p+".weight")+g(p+".bias")
erf = np.vectorize(math.erf)
def embed(text):
    ids = np.array(tok.encode(text).ids)
    n = len(ids)
    x = g("embeddings.word_embeddings.weight")[ids] + g("embeddings.position_embeddings.weight")[:n] + g("embeddings.token_type_embeddings.weight")[0]
    x = ln(x, "embeddings.LayerNorm")
    H = cfg["num_attention_heads"]; dh = cfg["hidden_size"]//H
    for l in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{l}."
        lin = lambda t, q: t @ g(q+".weight").T + g(q+".bias")
        q = lin(x, p+"attention.self.query").reshape(n,H,dh).transpose(1,0,2)
        k = lin(x, p+"attention.self.key").reshape(n,H,dh).transpose(1,0,2)
        v = lin(x, p+"attention.self.value").reshape(n,H,dh).transpose(1,0,2)
        a = q @ k.transpose(0,2,1) / math.sqrt(dh)
        a = np.exp(a - a.max(-1, keepdims=True)); a /= a.sum(-1, keepdims=True)
        c = (a @ v).transpose(1,0,2).reshape(n, H*dh)
        x = ln(lin(c, p+"attention.output.dense") + x, p+"attention.output.LayerNorm")
        h = lin(x, p+"intermediate.dense"); h = h*0.5*(1+erf(h/math.sqrt(2)))
        x = ln(lin(h, p+"output.dense") + x, p+"output.LayerNorm")
    m = x.mean(0)
    return m/np.linalg.norm(m)
for t in sys.argv[2:]:
    e = embed(t)
    print(json.dumps([round(float(v), 6) for v in e[:8]]), round(float(e.sum()), 6))
