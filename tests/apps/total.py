# A reducer, for tests: {"results": [...], "partial": P} in, the running
# {"count": results so far, "sum": their numbers summed, "parts": reducer
# jobs so far} out. A number counts as itself, a string as the number it
# spells (or 0), a list as the sum of its items, anything else 0. A job
# holding the string "crash" anywhere makes it exit with status 3. Native
# protocol.
import json
import sys


def value(r):
    if isinstance(r, bool):
        return 0
    if isinstance(r, (int, float)):
        return r
    if isinstance(r, str):
        try:
            return float(r)
        except ValueError:
            return 0
    if isinstance(r, list):
        return sum(value(x) for x in r)
    return 0


for line in sys.stdin:
    job = json.loads(line)
    results = job["results"]
    if '"crash"' in line:
        print("asked to crash", file=sys.stderr, flush=True)
        sys.exit(3)
    p = job.get("partial") or {"count": 0, "sum": 0, "parts": 0}
    print(json.dumps({
        "count": p["count"] + len(results),
        "sum": p["sum"] + sum(value(r) for r in results),
        "parts": p["parts"] + 1,
    }), flush=True)
