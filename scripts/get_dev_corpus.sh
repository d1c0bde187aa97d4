#!/usr/bin/env bash
# Build the dev corpus used by eval/dev_questions.jsonl from three Debian documentation packages.
#
#   bash scripts/get_dev_corpus.sh [--with-duplicates]
#   bash scripts/get_dev_corpus.sh --set dev2     (the broader dev2 corpus: runs scripts/get_dev2_corpus.sh)
#
# Result: data/dev_corpus/{debian-reference,lilypond,linuxcnc}/... (data/ is git-ignored) and
# data/dev_corpus.sha256 (one line per file; same package versions => same list).
#
# What goes in (see eval/README.md):
#   debian-reference/  Debian Reference (zh-CN), HTML chapters            (debian-reference-zh-cn)
#   lilypond/learning/ LilyPond Learning Manual, Chinese pages *.zh.html (lilypond-doc-html-zh)
#   lilypond/web/      LilyPond web site, Chinese pages *.zh.html
#   linuxcnc/          LinuxCNC manuals (PDF; the zh_CN build is English text) + G-code quick reference HTML
# Left out by default because they repeat content already in the corpus (retrieval would see each passage twice):
#   debian-reference.zh-cn.pdf / .txt.gz (same book as the HTML chapters), lilypond *-big-page.zh.html (all the
#   pages of a manual in one file), LinuxCNC_Getting_Started_zh_CN.pdf (a subset of LinuxCNC_Documentation).
#   --with-duplicates adds them too (e.g. to exercise the Chinese PDF and txt loaders).
# Skipped always: images, css, js, fonts, changelogs, copyright files, .desktop entries.
#
# Idempotent: downloaded .deb files are cached in data/.debs/; data/dev_corpus is rebuilt from scratch each run.
# Deterministic: package versions are pinned below (falls back to the current candidate, with a warning, if a pinned
# version has left the archive); files are copied in sorted order.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="$ROOT/data"
OUT="$DATA/dev_corpus"
DEBS="$DATA/.debs"
WITH_DUPLICATES=0

# --set dev|dev2: which corpus. dev2 (eval/dev2_questions.jsonl) is built by its own script.
if [ "${1:-}" = "--set" ]; then
    case "${2:-}" in
        dev) shift 2 ;;
        dev2) shift 2; exec bash "$ROOT/scripts/get_dev2_corpus.sh" "$@" ;;
        *) echo "unknown set: ${2:-} (dev or dev2)" >&2; exit 2 ;;
    esac
fi

for arg in "$@"; do
    case "$arg" in
        --with-duplicates) WITH_DUPLICATES=1 ;;
        -h|--help) sed -n '2,23p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

# package=version (Debian 12 "bookworm")
PINS=(
    "debian-reference-zh-cn=2.100"
    "lilypond-doc-html-zh=2.24.1-2"
    "linuxcnc-doc-zh-cn=2.9.0~pre1+git20230208.f1270d6ed7-1+deb12u2"
)

source "$ROOT/scripts/debs.sh"
need dpkg
need gzip

DEB_FILES=()
fetch_pinned_debs "eval/dev_questions.jsonl was checked against the pinned version; re-run tests/unit/test_dev_questions.py:"

# copy SRC DEST_REL: copies (and gunzips) one file into the staging tree
copy() {
    local src="$1" rel="$2"
    [ -f "$src" ] || { echo "error: expected file missing from package: $src" >&2; exit 1; }
    mkdir -p "$STAGE/$(dirname "$rel")"
    case "$src" in
        *.gz) gzip -dc "$src" >"$STAGE/${rel%.gz}" ;;
        *) cp "$src" "$STAGE/$rel" ;;
    esac
}

# copy_glob SRC_DIR PATTERN DEST_DIR [EXCLUDE_REGEX]
copy_glob() {
    local dir="$1" pat="$2" dest="$3" exclude="${4:-}" f
    while IFS= read -r f; do
        [ -n "$f" ] || continue
        if [ -n "$exclude" ] && [[ "$(basename "$f")" =~ $exclude ]]; then continue; fi
        copy "$dir/$f" "$dest/$f"
    done < <(cd "$dir" && find . -maxdepth 1 -type f -name "$pat" -printf '%P\n' | LC_ALL=C sort)
}

# --- Debian Reference (zh-CN): preface, 12 chapters, appendix, table of contents
copy_glob "$U/debian-reference" "*.zh-cn.html" "debian-reference"
if [ "$WITH_DUPLICATES" = 1 ]; then
    copy "$U/debian-reference/debian-reference.zh-cn.pdf" "debian-reference/debian-reference.zh-cn.pdf"
    copy "$U/debian-reference/debian-reference.zh-cn.txt.gz" "debian-reference/debian-reference.zh-cn.txt.gz"
fi

# --- LilyPond: only the Chinese (.zh.html) pages; the package has the Learning manual and the web site in Chinese
LY="$U/doc/lilypond/html/Documentation"
copy_glob "$LY/learning" "*.zh.html" "lilypond/learning"
copy_glob "$LY/web" "*.zh.html" "lilypond/web"
if [ "$WITH_DUPLICATES" = 1 ]; then
    copy_glob "$LY" "*-big-page.zh.html" "lilypond"
fi

# --- LinuxCNC manuals (the zh_CN build of 2.9.0~pre1 contains the English text) and the G-code quick reference
LC="$U/doc/linuxcnc"
copy "$LC/LinuxCNC_Documentation_zh_CN.pdf" "linuxcnc/LinuxCNC_Documentation_zh_CN.pdf"
copy "$LC/LinuxCNC_Developer_zh_CN.pdf" "linuxcnc/LinuxCNC_Developer_zh_CN.pdf"
copy "$LC/LinuxCNC_Integrator_zh_CN.pdf" "linuxcnc/LinuxCNC_Integrator_zh_CN.pdf"
copy "$LC/gcode_zh_CN.html" "linuxcnc/gcode_zh_CN.html"
if [ "$WITH_DUPLICATES" = 1 ]; then
    copy "$LC/LinuxCNC_Getting_Started_zh_CN.pdf" "linuxcnc/LinuxCNC_Getting_Started_zh_CN.pdf"
fi

# Never ship anything that is not a document (defensive: the globs above only take html/pdf/txt).
find "$STAGE" -type f \( -iname '*.png' -o -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.gif' -o -iname '*.svg' \
    -o -iname '*.css' -o -iname '*.js' -o -iname '*.woff*' -o -iname '*.ttf' -o -iname '*.otf' \) -delete
publish_corpus dev_corpus debian-reference lilypond linuxcnc
