#!/usr/bin/env python3
"""Sends every song in data/ to the REST server, as the course's sample client does, then shows the queue.

REST names the server (host:port or URL); default localhost:5000. MSAAS_API_KEY, when the server wants a key (a cluster
deployed with deploy.sh does). Needs only `requests`.
"""

import base64
import glob
import json
import os
import sys

import requests

REST = os.getenv("REST") or "localhost:5000"
BASE = REST if "://" in REST else f"http://{REST}"
PATTERN = "data/*.mp3"
KEY = os.getenv("MSAAS_API_KEY")
HEADERS = {"Authorization": f"Bearer {KEY}"} if KEY else {}


def mk_req(method, endpoint, data=None, verbose=True):
    url = f"{BASE}/{endpoint}"
    if verbose and data is not None:
        print(f"Make request {url} with json {list(data.keys())}")
        print(f"mp3 is of type {type(data['mp3'])} and length {len(data['mp3'])}")
    response = method(url, json=data, headers=HEADERS, timeout=300)
    if response.status_code == 200:
        print(json.dumps(response.json(), indent=4, sort_keys=True))
        return response.json()
    print(f"response code is {response.status_code}, raw response is {response.text}")
    return None


def main(pattern=PATTERN):
    songs = sorted(glob.glob(pattern))
    if not songs:
        print(f"no songs match {pattern}", file=sys.stderr)
        return 1
    failures = 0
    for mp3 in songs:
        print(f"Separate {mp3}")
        with open(mp3, "rb") as song:
            body = {
                "mp3": base64.b64encode(song.read()).decode("utf-8"),
                "callback": {"url": "http://localhost:5000", "data": {"mp3": mp3, "data": "to be returned"}},
            }
        if mk_req(requests.post, "apiv1/separate", data=body) is None:
            failures += 1
        print("Cache from server is")
        mk_req(requests.get, "apiv1/queue")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
