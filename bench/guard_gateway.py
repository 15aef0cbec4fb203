"""Added latency of the guard (rules + entity recogniser) in the gateway: sequential requests
(keep-alive) to the fake upstream directly and through `triage serve`, with a harness-like
conversation whose last user message is new each time (cache miss: ~500 new tokens scanned) or
resent unchanged (verdict cache hit)."""
import http.client, json, random, statistics, sys, time

up, gw, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
random.seed(7)
words = ("the build failed after the merge because the parser returns none on empty input so we "
         "changed it to return an error and added a regression test then reran the suite on linux "
         "and macos with the release profile and updated the changelog and the readme").split()
system = ("You are a coding agent. Use the tools to read and edit files.\n# Tone\n- Be concise.\n"
          "<env>\nWorking directory: /home/user/src/app\nPlatform: linux\nToday's date: 2026-12-07\n</env>\n") * 4

def msg(fresh):
    if not fresh:
        random.seed(1)
    text = " ".join(random.choice(words) for _ in range(380))
    return text + " Please send the summary to Valomir Trezanko at 12 Kestrel Road, Dunmore."

def body(model, fresh):
    return json.dumps({"model": model, "max_tokens": 16, "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": msg(fresh)}]})

def run(port, model, fresh):
    c = http.client.HTTPConnection("127.0.0.1", port)
    lat = []
    for i in range(n):
        b = body(model, fresh)
        t = time.perf_counter()
        c.request("POST", "/v1/chat/completions", b, {"content-type": "application/json"})
        r = c.getresponse(); r.read()
        lat.append((time.perf_counter() - t) * 1000)
        if r.status != 200 and i == 0:
            print("status", r.status, file=sys.stderr)
    lat.sort()
    return statistics.median(lat), lat[int(len(lat) * 0.99) - 1]

d = run(up, "fake-upstream-model", True)
print("| scenario | p50 ms | p99 ms | added p50 ms |")
print("| --- | ---: | ---: | ---: |")
print(f"| direct | {d[0]:.3f} | {d[1]:.3f} | - |")
for name, fresh in [("gateway, new 500-token message each request (scan)", True), ("gateway, same conversation resent (cache hit)", False)]:
    g = run(gw, "fake-local", fresh)
    print(f"| {name} | {g[0]:.3f} | {g[1]:.3f} | {g[0]-d[0]:.3f} |")
