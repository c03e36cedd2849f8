#!/usr/bin/env python3
"""Like sample-requests.py, for the short songs only (data/short-*.mp3): a quick check that the service works."""

import importlib.util
import sys
from pathlib import Path

spec = importlib.util.spec_from_file_location("sample_requests", Path(__file__).with_name("sample-requests.py"))
sample_requests = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sample_requests)

if __name__ == "__main__":
    sys.exit(sample_requests.main("data/short-*.mp3"))
