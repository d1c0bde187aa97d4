# Shared by scripts/get_dev_corpus.sh and scripts/get_dev2_corpus.sh (sourced, not run):
#   fetch_pinned_debs CHECK_HINT   downloads each "name=version" of PINS into $DEBS (cached), appends the .deb files
#                                  to DEB_FILES; a pin that left the archive falls back to the current candidate with
#                                  a warning that ends with CHECK_HINT, and unpacks them ($U = their usr/share, $STAGE = an
#                                  empty folder for the corpus).

need() { command -v "$1" >/dev/null 2>&1 || { echo "error: '$1' not found (Debian/Ubuntu with apt needed)" >&2; exit 1; }; }

have_deb() {  # have_deb NAME VERSION -> prints the cached file, if any
    local name="$1" ver="${2//:/%3a}" f
    # apt-get download escapes the ':' of an epoch as %3a in the file name (libreoffice-help-zh-cn_4%3a7.4.7-...).
    for f in "$DEBS/${name}_${ver}_all.deb" "$DEBS/${name}_${ver}_"*.deb; do
        [ -f "$f" ] && { echo "$f"; return 0; }
    done
    return 1
}

updated=0
apt_update_once() {
    if [ "$updated" = 0 ]; then
        echo "apt-get update ..."
        apt-get update -qq >/dev/null || { echo "error: apt-get update failed" >&2; exit 1; }
        updated=1
    fi
}

fetch_pinned_debs() {
    local hint="$1" pin name ver f
    need apt-get
    need apt-cache
    mkdir -p "$DEBS"
    # apt-get download as root warns when _apt cannot write the target folder; let it write there.
    chmod 0755 "$DATA" "$DEBS" 2>/dev/null || true
    for pin in "${PINS[@]}"; do
        name="${pin%%=*}"
        ver="${pin#*=}"
        if f="$(have_deb "$name" "$ver")"; then
            DEB_FILES+=("$f")
            continue
        fi
        # Before an update apt may know no version at all, or only an old one.
        if ! apt-cache show "$name=$ver" >/dev/null 2>&1; then
            apt_update_once
        fi
        if apt-cache show "$name=$ver" >/dev/null 2>&1; then
            (cd "$DEBS" && apt-get download -qq "$name=$ver" 2>&1 | grep -v 'unsandboxed' || true)
        else
            echo "warning: $name $ver is not in the archive any more; taking the current candidate" >&2
            echo "         ($hint $ver)" >&2
            (cd "$DEBS" && apt-get download -qq "$name" 2>&1 | grep -v 'unsandboxed' || true)
        fi
        f="$(ls -1 "$DEBS/${name}_"*.deb 2>/dev/null | sort | tail -n 1 || true)"
        [ -n "$f" ] && [ -f "$f" ] || { echo "error: could not download $name" >&2; exit 1; }
        DEB_FILES+=("$f")
    done
    # unpack them all into one temporary root: $U is its usr/share, $STAGE the empty corpus folder being built
    TMP="$(mktemp -d)"
    trap 'rm -rf "$TMP"' EXIT
    for f in "${DEB_FILES[@]}"; do
        dpkg -x "$f" "$TMP/root"
    done
    U="$TMP/root/usr/share"
    STAGE="$TMP/corpus"
    mkdir -p "$STAGE"
}

# publish_corpus NAME SUBFOLDER...: move $STAGE to $DATA/NAME (timestamps fixed), write $DATA/NAME.sha256 (one line per
# file; same package versions => same list) and print the files and MB per subfolder.
publish_corpus() {
    local name="$1" out="$DATA/$1" d n b
    shift
    find "$STAGE" -type f -exec touch -d '2000-01-01 00:00:00 UTC' {} +
    rm -rf "$out"
    mkdir -p "$DATA"
    mv "$STAGE" "$out"
    (cd "$out" && find . -type f -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum) >"$DATA/$name.sha256"
    echo "${name//_/ }: $out"
    for d in "$@" .; do
        n="$(find "$out/$d" -type f | wc -l)"
        b="$(find "$out/$d" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')"
        [ "$d" = . ] && d=total
        awk -v d="$d" -v n="$n" -v b="$b" 'BEGIN {printf "  %-17s %4d files %7.1f MB\n", d, n, b/1048576}'
    done
    echo "  file list + sha256: $DATA/$name.sha256"
}
