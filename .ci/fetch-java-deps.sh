#!/usr/bin/env bash
# Stanford CoreNLP 3.6.0 (code + models) from Maven Central for the official SPICE, checked against
# pinned SHA-1s and cached in ~/.cache/vlfusion/java (about 390 MB, fetched once; later runs take 0.1 s).
set -euo pipefail
"${1:-.venv/bin/python}" -m eval.java_deps fetch
