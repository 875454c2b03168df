"""Docker HEALTHCHECK for the UI image: healthy when the Gradio server answers on $PORT (default 7860).

Exec form (no shell) and only the standard library, so it also works while the app is busy with a GPU job.
"""

import os
import sys
import urllib.error
import urllib.request

url = os.environ.get("HEALTHCHECK_URL") or f"http://127.0.0.1:{os.environ.get('PORT', '7860')}/"
try:
    with urllib.request.urlopen(url, timeout=8) as response:
        sys.exit(0 if response.status < 500 else 1)
except urllib.error.HTTPError as err:
    sys.exit(0 if err.code < 500 else 1)
except OSError as err:
    print(f"healthcheck: {url} unreachable ({err})", file=sys.stderr)
    sys.exit(1)
