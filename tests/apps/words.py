# A pipeline's first stage, for tests: a JSON string in, the list of its
# words out (a stream's next stage gets each word as a job of its own);
# "-" is answered null (the line is dropped). Native protocol.
import json
import sys

for line in sys.stdin:
    text = json.loads(line)
    answer = None if text == "-" else str(text).split()
    print(json.dumps(answer), flush=True)
