# A native worker that talks out of turn: a JSON line at start-up, before
# any job, then it answers each job with {"echo": <job>}.
import json
import sys

print(json.dumps({"status": "loading model"}), flush=True)
for line in sys.stdin:
    print(json.dumps({"echo": json.loads(line)}), flush=True)
