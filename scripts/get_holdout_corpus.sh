#!/usr/bin/env bash
# Build the held-out corpus used by eval/holdout_questions.jsonl: nobody tunes on it (docs/EVAL.md, "Held-out set").
# Same kinds of documents as the unseen corpus the project was measured on from outside, from pinned Debian 12
# ("bookworm") packages that neither the dev nor the dev2 corpus uses (manpages-zh: only pages dev2 does not take).
#
#   bash scripts/get_holdout_corpus.sh
#
# Result: data/holdout_corpus/ (data/ is git-ignored) and data/holdout_corpus.sha256 (one line per file).
#
#   man/NAME.SEC.txt          command references: 43 Chinese man pages (manpages-zh) that dev2 does not use,
#                             rendered to plain text like dev2's (groff -k -Tutf8 -mandoc -rHY=0 -rLL=100n -P-c | col -bx)
#   calc-help/*.html          a desktop application's manual as HTML pages: the LibreOffice 7.4 Calc how-to guides,
#                             zh-CN (libreoffice-help-zh-cn, text/scalc/guide/, every page of that folder)
#   policy-html/*.html        one long manual, edition 1: the Debian Policy Manual 4.6.2.0, multi-page HTML
#                             (debian-policy; the chapters, appendices and the upgrading checklist, no index/search)
#   policy-pdf/*.pdf          the same manual, edition 2: its PDF (193 pages)
#
# Idempotent: .deb files are cached in data/.debs/ (shared with the dev and dev2 scripts); data/holdout_corpus is
# rebuilt from scratch on each run. Deterministic: pinned versions (falls back to the current candidate, with a
# warning, if a pin has left the archive), sorted copies, fixed mtimes, fixed groff options.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="$ROOT/data"
DEBS="$DATA/.debs"

if [ $# -gt 0 ]; then  # no options: -h / --help prints the header above
    [ "$1" = -h ] || [ "$1" = --help ] || { echo "unknown argument: $1" >&2; exit 2; }
    sed -n '2,21p' "${BASH_SOURCE[0]}"; exit 0
fi

# package=version (Debian 12 "bookworm"); libreoffice-help-zh-cn has an epoch (4:), kept in the pin.
PINS=(
    "manpages-zh=1.6.4.0-1"
    "libreoffice-help-zh-cn=4:7.4.7-1+deb12u14"
    "debian-policy=4.6.2.0"
)

# Chinese man pages taken (section/name), none of them in scripts/get_dev2_corpus.sh: file, text and process
# tools, system information, systemd tools, a few configuration files and storage/administration tools.
MAN_PAGES=(
    man1/at man1/basename man1/bzip2 man1/cat man1/chattr man1/chgrp man1/comm man1/cpio man1/dig man1/env
    man1/expr man1/file man1/free man1/id man1/kill man1/killall man1/ldd man1/localectl man1/loginctl man1/mktemp
    man1/nice man1/nl man1/od man1/paste man1/readlink man1/shuf man1/truncate man1/uname man1/who man1/xxd
    man5/hostname man5/machine-id man5/modules-load.d man5/nsswitch man5/sysctl.d man5/vconsole.conf
    man8/blockdev man8/dmesg man8/fsck man8/losetup man8/shutdown man8/swapon man8/vmstat
)

source "$ROOT/scripts/debs.sh"
need dpkg
need gzip
need groff
need col

DEB_FILES=()
fetch_pinned_debs "eval/holdout_questions.jsonl was checked against the pinned version; re-run scripts/check_holdout_evidence.py:"

mkdir -p "$STAGE"/{man,calc-help,policy-html,policy-pdf}

export LC_ALL=C.UTF-8

# --- 1. command references: Chinese man pages -> plain UTF-8 text (exactly as get_dev2_corpus.sh renders them)
for p in "${MAN_PAGES[@]}"; do
    sec="${p%%/*}"; name="${p#*/}"; n="${sec#man}"
    src="$U/man/zh_CN/$sec/$name.$n.gz"
    [ -f "$src" ] || { echo "error: missing man page $src" >&2; exit 1; }
    gzip -dc "$src" | groff -k -Tutf8 -mandoc -rHY=0 -rLL=100n -P-c 2>/dev/null | col -bx >"$STAGE/man/$name.$n.txt"
    [ -s "$STAGE/man/$name.$n.txt" ] || { echo "error: empty rendering of $src" >&2; exit 1; }
done

# --- 2. desktop application manual: LibreOffice Calc guides (zh-CN help pages), the whole guide folder
LO="$U/libreoffice/help/zh-CN/text/scalc/guide"
[ -d "$LO" ] || { echo "error: missing $LO" >&2; exit 1; }
while IFS= read -r f; do
    cp "$LO/$f" "$STAGE/calc-help/$f"
done < <(cd "$LO" && find . -maxdepth 1 -type f -name '*.html' -printf '%P\n' | LC_ALL=C sort)

# --- 3. one manual in two editions: Debian Policy Manual, HTML pages and PDF
POL="$U/doc/debian-policy"
while IFS= read -r f; do
    cp "$POL/policy.html/$f" "$STAGE/policy-html/$f"
done < <(cd "$POL/policy.html" && find . -maxdepth 1 -type f \( -name 'ch-*.html' -o -name 'ap-*.html' \
            -o -name 'upgrading-checklist.html' \) -printf '%P\n' | LC_ALL=C sort)
gzip -dc "$POL/policy.pdf.gz" >"$STAGE/policy-pdf/debian-policy.pdf"

publish_corpus holdout_corpus man calc-help policy-html policy-pdf
