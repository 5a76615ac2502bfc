# A pipeline's middle stage, for tests: a JSON string in, the same in
# capitals out; the word "poison" makes it exit with status 3 (each time:
# the job fails on every attempt). Native protocol.
import json
import sys

for line in sys.stdin:
    word = json.loads(line)
    if word == "poison":
        print("poisoned", file=sys.stderr, flush=True)
        sys.exit(3)
    print(json.dumps(str(word).upper()), flush=True)
