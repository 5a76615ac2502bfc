# A native-protocol worker for tests: one JSON job per line on stdin, one
# JSON answer per line on stdout. What it does depends on the job:
#   {"crash": true}  writes to stderr and exits with status 3
#   {"hang": true}   never answers
#   {"bad": true}    answers a line that is not JSON
#   {"sleep": S}     answers after S seconds
#   anything else    answers {"pid": <its pid>, "echo": <the job>}
# Every answer is delayed by TOOL_DELAY seconds (default 0).
import json
import os
import sys
import time

DELAY = float(os.environ.get("TOOL_DELAY", "0"))

for line in sys.stdin:
    job = json.loads(line)
    if isinstance(job, dict) and job.get("crash"):
        print("boom: asked to crash", file=sys.stderr, flush=True)
        sys.exit(3)
    if isinstance(job, dict) and job.get("hang"):
        time.sleep(3600)
    if isinstance(job, dict) and job.get("bad"):
        print("this is not json", flush=True)
        continue
    if isinstance(job, dict) and "sleep" in job:
        time.sleep(float(job["sleep"]))
    if DELAY:
        time.sleep(DELAY)
    print(json.dumps({"pid": os.getpid(), "echo": job}), flush=True)
