#!/usr/bin/env bash
# Regenerates the golden files in this folder with the real sacreBLEU 2.6.0, and the character
# tables in ../unicode_tables.rs. Needs Python 3 with venv and pip (with access to the Python
# package index); nothing is installed outside the throwaway venv.
#
#   python3 -m venv /tmp/sbvenv && /tmp/sbvenv/bin/pip install sacrebleu==2.6.0
#   cd /tmp && /tmp/sbvenv/bin/pip download --no-binary :all: --no-deps sacrebleu==2.6.0
#   tar xzf sacrebleu-2.6.0.tar.gz          # its test/ folder holds the WMT17 en-de systems
#
# The golden files in the repository were made with Python 3.11.7 (Unicode 14.0.0) and regex
# 2026.11.19. The hand-written cases (edge.*, zh.*, zero.*, single.*) are committed as they are.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${SBVENV:-/tmp/sbvenv}"
work="${SBWORK:-/tmp/sbsrc}"
if [ ! -x "$venv/bin/sacrebleu" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet sacrebleu==2.6.0
fi
if [ ! -d "$work/sacrebleu-2.6.0/test" ]; then
    mkdir -p "$work"
    (cd "$work" && "$venv/bin/pip" download --quiet --no-binary :all: --no-deps sacrebleu==2.6.0 \
        && tar xzf sacrebleu-2.6.0.tar.gz)
fi
"$venv/bin/python" "$here/../gen_unicode_tables.py" > "$here/../unicode_tables.rs"
"$venv/bin/python" "$here/make_golden.py" "$work/sacrebleu-2.6.0" "$venv/bin/sacrebleu"
"$venv/bin/python" "$here/make_tokenizer_golden.py" 600
