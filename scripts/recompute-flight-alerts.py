#!/usr/bin/env python3
# usage: scripts/recompute-flight-alerts.py FLIGHTS.csv[.zip] ALERTS.jsonl
"""Independent recomputation of the four flight patterns from the CSV,
compared with the engine's alerts (JSON lines)."""
import csv, sys, json, datetime, collections, io, zipfile

src, alerts_path = sys.argv[1], sys.argv[2]
H = 3600_000
def ts(s):
    return int(datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc).timestamp()) * 1000
f = io.TextIOWrapper(zipfile.ZipFile(src).open("flights.csv")) if src.endswith(".zip") else open(src)
rows = []
for i, r in enumerate(csv.DictReader(f)):
    r = {k: v for k, v in r.items() if v not in ("", "NA")}
    r["_t"] = ts(r["time_hour"]); r["_i"] = i
    for k in ("dep_delay", "arr_delay", "flight"):
        if k in r: r[k] = int(r[k])
    rows.append(r)

def by_key(keyf):
    d = collections.defaultdict(list)
    for r in rows:
        k = keyf(r)
        if k is not None: d[k].append(r)
    for v in d.values(): v.sort(key=lambda r: (r["_t"], r["_i"]))
    return d

def greedy_windows(evs, window, need):
    out, i = [], 0
    while i < len(evs):
        j = i
        while j + 1 < len(evs) and evs[j + 1]["_t"] < evs[i]["_t"] + window: j += 1
        if j - i + 1 >= need:
            out.append(evs[i:j + 1]); i = j + 1
        else:
            i += 1
    return out

exp = collections.defaultdict(set)
# delayed_departures
for k, evs in by_key(lambda r: r.get("tailnum")).items():
    d = [r for r in evs if r.get("dep_delay", -1e9) > 60]
    for g in greedy_windows(d, 24 * H, 3):
        exp["delayed_departures"].add((k, g[0]["_t"], g[-1]["_t"], len(g), max(r["dep_delay"] for r in g), tuple(r["flight"] for r in g)))
# cancellation_cluster
for k, evs in by_key(lambda r: (r["carrier"], r["origin"])).items():
    c = [r for r in evs if "dep_delay" not in r]
    for g in greedy_windows(c, 1 * H, 5):
        exp["cancellation_cluster"].add((list(k).__repr__(), g[0]["_t"], g[-1]["_t"], len(g), None, tuple(r["flight"] for r in g)))
# grounded_after_cancellation
tails = by_key(lambda r: r.get("tailnum"))
for k, evs in tails.items():
    i = 0
    while i < len(evs):
        if "dep_delay" in evs[i]:
            i += 1; continue
        end = evs[i]["_t"] + 24 * H
        j = i
        while j + 1 < len(evs) and evs[j + 1]["_t"] < end and "dep_delay" not in evs[j + 1]: j += 1
        departed_inside = j + 1 < len(evs) and evs[j + 1]["_t"] < end
        if departed_inside:
            i += 1
        else:
            g = evs[i:j + 1]
            exp["grounded_after_cancellation"].add((k, g[0]["_t"], end, len(g), None, tuple(r["flight"] for r in g)))
            i = j + 1
# delay_propagation
prop = 0; prop_no_airport = 0
for k, evs in tails.items():
    for a, b in zip(evs, evs[1:]):
        if a.get("arr_delay", -1e9) > 30 and b.get("dep_delay", -1e9) > 30 and b["_t"] - a["_t"] < 6 * H:
            prop_no_airport += 1
            if b["origin"] == a["dest"]:
                prop += 1
                exp["delay_propagation"].add((k, a["_t"], b["_t"], 2, None, (a["flight"], b["flight"])))

got = collections.defaultdict(set)
for line in open(alerts_path):
    a = json.loads(line); f = a["fields"]; p = a["pattern"]
    if p == "delayed_departures":
        t = (a["key"], a["start_ms"], a["end_ms"], f["count"], f["max_delay"])
    elif p == "cancellation_cluster":
        t = (repr(a["key"]), a["start_ms"], a["end_ms"], f["count"], None)
    elif p == "grounded_after_cancellation":
        t = (a["key"], a["start_ms"], a["end_ms"], f["cancelled_count"], None)
    else:
        t = (a["key"], a["start_ms"], a["end_ms"], 2, None)
    got[p].add(t)
ok = True
for p in sorted(set(exp) | set(got) | {"delay_propagation"}):
    e = {x[:5] for x in exp[p]}
    g = got[p]
    print(f"{p}: engine {len(g)}, recomputed {len(e)}, only-engine {len(g - e)}, only-recomputed {len(e - g)}")
    for x in sorted(g - e)[:5]: print("   only engine:", x)
    for x in sorted(e - g)[:5]: print("   only recomputed:", x)
    ok &= e == g
print("delay_propagation without the origin == arr.dest condition would give", prop_no_airport)
print("ALL EQUAL" if ok else "DIFFERENCES")
