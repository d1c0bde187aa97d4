#!/usr/bin/env bash
# Build the "dev2" corpus used by eval/dev2_questions.jsonl: four kinds of documents, Chinese and English, from
# pinned Debian 12 ("bookworm") packages.
#
#   bash scripts/get_dev2_corpus.sh          (also: bash scripts/get_dev_corpus.sh --set dev2)
#
# Result: data/dev2_corpus/ (data/ is git-ignored) and data/dev2_corpus.sha256 (one line per file).
#
#   man/NAME.SEC.txt          command/option references: 50 Chinese man pages (manpages-zh), rendered to plain
#                             text with groff -Tutf8 -mandoc (no hyphenation) | col -bx
#   handbook/*.html           HTML manual: The Debian Administrator's Handbook, zh-CN (debian-handbook), all pages
#   pdf/*.pdf                 PDF books (Chinese): Debian Edu 12 manual (debian-edu-doc-zh-cn, 98 pages) and the
#                             Debian New Maintainers' Guide (maint-guide-zh-cn, 63 pages)
#   office/nodejs/*.md        Markdown documents (English): 12 chapters of the Node.js 18 API docs (nodejs-doc)
#   office/debian-faq/*.docx  Word documents (Chinese): 8 chapters of the Debian FAQ zh-CN HTML (debian-faq-zh-cn)
#                             converted with pandoc (installed with apt-get if missing)
#
# Idempotent: .deb files are cached in data/.debs/ (shared with get_dev_corpus.sh); data/dev2_corpus is rebuilt
# from scratch on each run. Deterministic: pinned versions (falls back to the current candidate, with a warning, if a
# pin has left the archive), sorted copies, fixed mtimes, SOURCE_DATE_EPOCH for pandoc's .docx, fixed groff
# options. The .docx bytes depend on the pandoc version (2.17.1.1 in bookworm); their text does not.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="$ROOT/data"
OUT="$DATA/dev2_corpus"
DEBS="$DATA/.debs"

if [ $# -gt 0 ]; then  # no options: -h / --help prints the header above
    [ "$1" = -h ] || [ "$1" = --help ] || { echo "unknown argument: $1" >&2; exit 2; }
    sed -n '2,22p' "${BASH_SOURCE[0]}"; exit 0
fi

# package=version (Debian 12 "bookworm")
PINS=(
    "manpages-zh=1.6.4.0-1"
    "debian-handbook=11.20220922"
    "debian-edu-doc-zh-cn=2.12.23~deb12u1"
    "maint-guide-zh-cn=1.2.53"
    "nodejs-doc=18.20.4+dfsg-1~deb12u3"
    "debian-faq-zh-cn=11.1"
)

# Chinese man pages taken (section/name): everyday commands, a few config files and admin tools.
MAN_PAGES=(
    man1/base64 man1/chmod man1/chown man1/cp man1/cut man1/date man1/dd man1/df man1/diff man1/du
    man1/find man1/grep man1/gzip man1/head man1/hostnamectl man1/journalctl man1/ln man1/ls man1/mkdir
    man1/mv man1/nohup man1/rm man1/scp man1/sed man1/seq man1/sha256sum man1/sort man1/split man1/ssh
    man1/stat man1/systemctl man1/tail man1/tar man1/tee man1/timedatectl man1/timeout man1/touch man1/uniq
    man1/wc man1/xargs
    man5/journald.conf man5/locale.conf man5/logind.conf man5/os-release man5/resolved.conf
    man8/fdisk man8/iptables man8/mkswap man8/ping man8/tcpdump
)

# Node.js API chapters taken (Markdown, English)
NODE_MD=(child_process cli dns events os path process readline timers url util worker_threads)

# Debian FAQ chapters converted to .docx
FAQ_CHAPTERS=(basic-defs choosing compatibility customizing ftparchives pkg-basics pkgtools support)

source "$ROOT/scripts/debs.sh"
need dpkg
need gzip
need groff
need col

if ! command -v pandoc >/dev/null 2>&1; then
    echo "installing pandoc (apt-get) ..."
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pandoc >/dev/null
fi

DEB_FILES=()
fetch_pinned_debs "eval/dev2_questions.jsonl was checked against the pinned version; re-run scripts/check_dev2_evidence.py:"

mkdir -p "$STAGE"/{man,handbook,pdf,office/nodejs,office/debian-faq}

export LC_ALL=C.UTF-8 SOURCE_DATE_EPOCH=946684800

# --- 1. command/option references: Chinese man pages -> plain UTF-8 text
for p in "${MAN_PAGES[@]}"; do
    sec="${p%%/*}"; name="${p#*/}"; n="${sec#man}"
    src="$U/man/zh_CN/$sec/$name.$n.gz"
    [ -f "$src" ] || { echo "error: missing man page $src" >&2; exit 1; }
    # -k: preconv (UTF-8 input); -rHY=0: no hyphenation; -rLL=100n: line length; -P-c: no SGR escapes.
    gzip -dc "$src" | groff -k -Tutf8 -mandoc -rHY=0 -rLL=100n -P-c 2>/dev/null | col -bx >"$STAGE/man/$name.$n.txt"
    [ -s "$STAGE/man/$name.$n.txt" ] || { echo "error: empty rendering of $src" >&2; exit 1; }
done

# --- 2. HTML manual: Debian Administrator's Handbook, zh-CN, every page (no images/css)
HB="$U/doc/debian-handbook/html/zh-CN"
while IFS= read -r f; do
    cp "$HB/$f" "$STAGE/handbook/$f"
done < <(cd "$HB" && find . -maxdepth 1 -type f -name '*.html' -printf '%P\n' | LC_ALL=C sort)

# --- 3. PDF books (Chinese)
cp "$U/doc/debian-edu-doc-zh-cn/debian-edu-bookworm-manual.pdf" "$STAGE/pdf/debian-edu-bookworm-manual.zh-cn.pdf"
cp "$U/doc/maint-guide-zh-cn/maint-guide.zh-cn.pdf" "$STAGE/pdf/maint-guide.zh-cn.pdf"

# --- 4. office-like documents: Markdown (English) and .docx made with pandoc from HTML (Chinese)
NODE="$U/doc/nodejs/api"
for m in "${NODE_MD[@]}"; do
    if [ -f "$NODE/$m.md" ]; then cp "$NODE/$m.md" "$STAGE/office/nodejs/$m.md"
    elif [ -f "$NODE/$m.md.gz" ]; then gzip -dc "$NODE/$m.md.gz" >"$STAGE/office/nodejs/$m.md"
    else echo "error: missing $NODE/$m.md" >&2; exit 1; fi
done
FAQ="$U/doc/debian/FAQ/zh-cn"
for c in "${FAQ_CHAPTERS[@]}"; do
    # --resource-path keeps pandoc from fetching anything; images are dropped (not needed for text).
    (cd "$FAQ" && pandoc --from html --to docx --resource-path=. \
        --metadata title="Debian FAQ: $c" -o "$STAGE/office/debian-faq/$c.docx" "$c.zh-cn.html" 2>/dev/null) \
        || { echo "error: pandoc failed on $c" >&2; exit 1; }
done

publish_corpus dev2_corpus man handbook pdf office
