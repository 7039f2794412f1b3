#!/usr/bin/env bash
# Build the Pulumi CLI, Python language host and resource plugins from Go modules into .tools/.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib-exec.sh"

# Pins. The Python packages in the venv say which plugin versions the engine will
# ask for (it matches them exactly); the script checks these pins against them.
PULUMI_VERSION=3.274.1     # pkg/v3 + sdk/v3: the proxy has no v3.272.0 (the venv's SDK); nearest served
PULUMI_LANGHOST_MODVER=""  # pseudo-version of the v$PULUMI_VERSION commit; that module is not served (see ADR 0002)
COMMAND_VERSION=1.2.1
COMMAND_MODVER=v0.0.0-20260303235922-7f3eb6f3b77c   # commit 7f3eb6f3b77c = tag v1.2.1; not served either
PROXMOXVE_VERSION=8.6.0
PROXMOXVE_MODVER=""        # commit of tag v8.6.0; module not served

PULUMI_PKG=github.com/pulumi/pulumi/pkg/v3
PULUMI_SDK=github.com/pulumi/pulumi/sdk/v3
LANGHOST_MOD=github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3
COMMAND_MOD=github.com/pulumi/pulumi-command/provider
PROXMOXVE_MOD=github.com/muhlba91/pulumi-proxmoxve/provider
VERSION_PKG=github.com/pulumi/pulumi/sdk/v3/go/common/version.Version

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME [--only LIST] [--best-effort] [--check] [--print-env] [--help]

Builds the Pulumi toolchain from Go modules (no download site needed, only the
Go module proxy), pinned and reproducible, into \$TOOLCHAIN_DIR:
  bin/pulumi                    CLI v$PULUMI_VERSION            (tools/pulumi/go.mod)
  bin/pulumi-language-python    Python language host, + its -exec shim
  pulumi/plugins/resource-command-v$COMMAND_VERSION/     pulumi-resource-command
  pulumi/plugins/resource-proxmoxve-v$PROXMOXVE_VERSION/  pulumi-resource-proxmoxve
Built binaries are also kept in \$TOOLCHAIN_CACHE, keyed by version, so another
clone on this machine only copies them. A second run rebuilds nothing.

Options:
  --only LIST   comma-separated subset of: cli,python,command,proxmoxve (default: all)
  --best-effort build what can be built, warn about the rest, exit 0
  --check       print what is present (stdout) and exit 0 if all of LIST is, else 1
  --print-env   print the export lines a shell or Makefile needs to use the toolchain
  --help        this text

Environment:
  TOOLCHAIN_DIR      where to install (default .tools; relative = from the repo root)
  TOOLCHAIN_CACHE    per-user binary cache (default \${XDG_CACHE_HOME:-~/.cache}/homelab-media/toolchain)
  VENV               the project venv whose pulumi packages are checked (default .venv)
  GO                 the go command (default: go on PATH, else /usr/local/go/bin/go)
  TOOLCHAIN_FORCE_BUILD=1  build into TOOLCHAIN_DIR even when a pulumi is installed on PATH
  VERBOSE=1          show go's output
The language host and both providers are built only when the Go module proxy serves
their modules (today it serves none of them, nor pulumi-java, which proxmoxve's build
needs: docs/adr/0002-toolchain-from-go-modules.md). A binary already in
TOOLCHAIN_CACHE (<name>-v<version>-<go>-<os_arch>/ with its BUILT line) is used first,
so a binary you built or obtained elsewhere can be seeded there.
A cold build takes about 6 minutes on 2 cores, mostly the CLI.
EOF
}

ONLY=cli,python,command,proxmoxve CHECK=0 PRINT_ENV=0 BEST_EFFORT=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --only) [[ -n ${2:-} && $2 != --* ]] || die "--only needs a list (see --help)" 2; ONLY=$2; shift 2 ;;
    --best-effort) BEST_EFFORT=1; shift ;;
    --only=*) ONLY=${1#*=}; shift ;;
    --check) CHECK=1; shift ;;
    --print-env) PRINT_ENV=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" 2 ;;
  esac
done
for c in ${ONLY//,/ }; do
  case $c in cli | python | command | proxmoxve) ;; *) die "unknown component in --only: $c" 2 ;; esac
done
wants() { [[ ,$ONLY, == *",$1,"* ]]; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLCHAIN_DIR=${TOOLCHAIN_DIR:-.tools}
[[ $TOOLCHAIN_DIR == /* ]] || TOOLCHAIN_DIR=$REPO/$TOOLCHAIN_DIR
BIN=$TOOLCHAIN_DIR/bin
export PULUMI_HOME=$TOOLCHAIN_DIR/pulumi
export PULUMI_SKIP_UPDATE_CHECK=true PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
CACHE=${TOOLCHAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/homelab-media/toolchain}
VENV=${VENV:-$REPO/.venv}
[[ $VENV == /* ]] || VENV=$REPO/$VENV

if [[ $PRINT_ENV -eq 1 ]]; then
  # shellcheck disable=SC2016  # $PATH is for the shell that evals this line
  printf 'export PATH=%q:"$PATH"\n' "$BIN"
  printf 'export PULUMI_HOME=%q\n' "$PULUMI_HOME"
  printf 'export PULUMI_SKIP_UPDATE_CHECK=true PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true\n'
  exit 0
fi

plugin_path() { printf '%s/plugins/resource-%s-v%s/pulumi-resource-%s' "$PULUMI_HOME" "$1" "$2" "$1"; }

GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}

# version_of BIN ARG: what a binary says its version is ("" when it cannot say).
version_of() {
  local out
  out=$(timeout 30 "$1" "$2" 2>/dev/null) || return 0
  out=${out##*$'\n'}
  printf '%s' "${out#v}"
}
# The providers have no version flag (run with one they start serving), and
# -trimpath keeps -ldflags out of their build info. So their version is the one
# they were built for, recorded with their checksum: in the cache entry (BUILT)
# and, once installed, in $TOOLCHAIN_DIR/manifest ("name version sha256" lines).
MANIFEST=$TOOLCHAIN_DIR/manifest
COMMAND_VERVAR=github.com/pulumi/pulumi-command/provider/pkg/version.Version
PROXMOXVE_VERVAR=github.com/muhlba91/pulumi-proxmoxve/provider/pkg/version.Version
sha_of() { sha256sum "$1" | cut -d' ' -f1; }
# recorded_version FILE NAME LIST: the version LIST records for FILE's checksum.
recorded_version() {
  [[ -f $3 && -f $1 ]] || return 0
  awk -v n="$2" -v h="$(sha_of "$1")" '$1 == n && $3 == h { print $2; exit }' "$3"
}

# have_version NAME FILE: the version of one installed or cached binary.
have_version() {
  case $1 in
    cli) version_of "$2" version ;;
    python) version_of "$2" -version ;;
    command | proxmoxve)
      if [[ -f ${2%/*}/BUILT ]]; then recorded_version "$2" "$1" "${2%/*}/BUILT"; else recorded_version "$2" "$1" "$MANIFEST"; fi ;;
  esac
}

# present NAME: 0 when that component is installed at its pinned version.
present() {
  case $1 in
    cli) [[ -x $BIN/pulumi && $(have_version cli "$BIN/pulumi") == "$PULUMI_VERSION" ]] ;;
    python) [[ -x $BIN/pulumi-language-python-exec && -x $BIN/pulumi-language-python &&
      $(have_version python "$BIN/pulumi-language-python") == "$PULUMI_VERSION" ]] ;;
    command) plugin_ok command "$COMMAND_VERSION" ;;
    proxmoxve) plugin_ok proxmoxve "$PROXMOXVE_VERSION" ;;
  esac
}
plugin_ok() {
  local p
  p=$(plugin_path "$1" "$2")
  [[ -x $p && ! -e ${p%/*}.partial && $(have_version "$1" "$p") == "$2" ]]
}

if [[ $CHECK -eq 1 ]]; then
  rc=0
  for c in cli python command proxmoxve; do
    wants "$c" || continue
    case $c in
      cli) f=$BIN/pulumi want=$PULUMI_VERSION ;;
      python) f=$BIN/pulumi-language-python want=$PULUMI_VERSION ;;
      command) f=$(plugin_path command "$COMMAND_VERSION") want=$COMMAND_VERSION ;;
      proxmoxve) f=$(plugin_path proxmoxve "$PROXMOXVE_VERSION") want=$PROXMOXVE_VERSION ;;
    esac
    have=missing
    [[ -x $f ]] && have=$(have_version "$c" "$f") && have=${have:-unknown}
    if present "$c"; then state=ok; else state=MISSING rc=1; fi
    printf '%-10s want %-8s have %-8s %-7s %s\n' "$c" "$want" "$have" "$state" "${f#"$REPO"/}"
  done
  sys=$(command -v pulumi || true)
  if [[ -n $sys && $sys != "$BIN/pulumi" ]]; then
    printf '%-10s %s (v%s) is on PATH too\n' system "$sys" "$(have_version cli "$sys")"
  fi
  exit "$rc"
fi

# --- Go and the venv ---------------------------------------------------------
[[ -x $GO ]] || die "no go command (set GO=/path/to/go; Go >= 1.26 is needed)"
GOVER=$("$GO" env GOVERSION)
[[ $GOVER =~ ^go1\.(2[6-9]|[3-9][0-9]) ]] || die "$GOVER is too old: Go >= 1.26 is needed"
PLATFORM=$("$GO" env GOOS)_$("$GO" env GOARCH)
export CGO_ENABLED=0
GO_BUILD=("$GO" build -trimpath -buildvcs=false)

step "Checking pins against the venv ($VENV)"
site=$(compgen -G "$VENV/lib/python3*/site-packages" | head -n1) || true
[[ -n $site ]] || die "no venv at $VENV (run uv sync first, or set VENV)"
json_version() { sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' "$1"; }
check_pin() { # check_pin PYPKG PIN
  local f=$site/$1/pulumi-plugin.json got
  [[ -f $f ]] || die "$f missing: is $1 installed in the venv?"
  got=$(json_version "$f")
  [[ $got == "$2" ]] || die "$1 asks for plugin v$got but this script pins v$2: update the pin"
}
wants command && check_pin pulumi_command "$COMMAND_VERSION"
wants proxmoxve && check_pin pulumi_proxmoxve "$PROXMOXVE_VERSION"
sdk=$(compgen -G "$site/pulumi-*.dist-info" | sed -n 's/.*pulumi-\([0-9][^/]*\)\.dist-info$/\1/p' | head -n1)
[[ -n $sdk ]] || die "no pulumi SDK in $site"
if [[ $(printf '%s\n%s\n' "$sdk" "$PULUMI_VERSION" | sort -V | head -n1) != "$sdk" ]]; then
  die "CLI pin v$PULUMI_VERSION is older than the venv's SDK v$sdk: raise PULUMI_VERSION"
fi
ok "Pins match the venv (SDK v$sdk, CLI v$PULUMI_VERSION, command v$COMMAND_VERSION, proxmoxve v$PROXMOXVE_VERSION)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/toolchain.XXXXXX")
trap 'chmod -R u+w "$WORK" 2>/dev/null; rm -rf "$WORK"' EXIT
mkdir -p "$BIN" "$CACHE"
MISSING=()
UPDATED=() # what this run changed (own list: lib.sh's may differ between versions)
updated() { UPDATED+=("$1"); ok "$1"; }

# cache_dir NAME VERSION: where the built binaries of one component live.
cache_dir() { printf '%s/%s-v%s-%s-%s' "$CACHE" "$1" "$2" "$GOVER" "$PLATFORM"; }

# store DIR NAME VERSION FILE: put a freshly built binary into the user cache
# atomically, with a BUILT line ("name version sha256").
store() {
  local dir=$1 tmp
  tmp=$(mktemp -d "$CACHE/.new.XXXXXX")
  install -m 0755 "$4" "$tmp/"
  printf '%s %s %s\n' "$2" "$3" "$(sha_of "$4")" >"$tmp/BUILT"
  rm -rf "$dir"
  mv "$tmp" "$dir"
}

# install_file SRC DEST: copy when different.
install_file() {
  if ! cmp -s "$1" "$2"; then
    install -m 0755 "$1" "$2.tmp"
    mv -f "$2.tmp" "$2"
    updated "Installed ${2#"$REPO"/}"
  fi
}

# fetch_module MOD@VER: download one module zip; prints its directory in the module cache.
fetch_module() {
  local out dir
  if ! out=$(cd "$WORK" && "$GO" mod download -json "$1" 2>&1); then
    out=$(sed -n 's/.*"Error": *"\(.*\)".*/\1/p' <<<"$out" | head -n1)
    warn "$1: ${out:-go mod download failed}"
    return 1
  fi
  dir=$(sed -n 's/.*"Dir": *"\(.*\)".*/\1/p' <<<"$out")
  [[ -d $dir ]] || return 1
  printf '%s' "$dir"
}

# copy_tree SRC DEST: a writable copy of a module (the module cache is read-only).
copy_tree() { mkdir -p "$2" && cp -R "$1/." "$2/" && chmod -R u+w "$2"; }

secs() { echo $((SECONDS - $1))s; }

# --- CLI + language host + exec shim ------------------------------------------------
WRAP=$REPO/tools/pulumi
cli_built() {
  local dir t
  dir=$(cache_dir pulumi "$PULUMI_VERSION")
  if [[ -x $dir/pulumi && $(have_version cli "$dir/pulumi") == "$PULUMI_VERSION" ]]; then
    ok "pulumi v$PULUMI_VERSION found in $dir"
  else
    step "Downloading the modules of pulumi v$PULUMI_VERSION (tools/pulumi/go.mod)"
    t=$SECONDS
    (cd "$WRAP" && quiet "$GO" mod download)
    ok "Downloaded ($(secs "$t"))"
    step "Building pulumi v$PULUMI_VERSION (CGO_ENABLED=0 -trimpath -tags osusergo,grpcnotrace)"
    t=$SECONDS
    (cd "$WRAP" && quiet "${GO_BUILD[@]}" -tags osusergo,grpcnotrace \
      -ldflags "-s -w -X $VERSION_PKG=v$PULUMI_VERSION" -o "$WORK/pulumi" "$PULUMI_PKG/cmd/pulumi")
    store "$dir" cli "$PULUMI_VERSION" "$WORK/pulumi"
    ok "Built pulumi v$PULUMI_VERSION ($(secs "$t"))"
  fi
  install_file "$dir/pulumi" "$BIN/pulumi"
}

# The exec shim is a Python script in the sdk/v3 module zip (not in the PyPI wheel).
install_exec_shim() {
  local sdkdir
  sdkdir=$(cd "$WRAP" && "$GO" list -m -f '{{.Dir}}' "$PULUMI_SDK")
  if [[ ! -f $sdkdir/python/cmd/pulumi-language-python-exec ]]; then
    (cd "$WRAP" && quiet "$GO" mod download "$PULUMI_SDK")
  fi
  install_file "$sdkdir/python/cmd/pulumi-language-python-exec" "$BIN/pulumi-language-python-exec"
}

# A tree laid out like the pulumi/pulumi repository, so the language host's own
# go.mod (relative replaces of ../../../../pkg and ../../..) applies as upstream.
langhost_tree() {
  local pkg sdk lh
  [[ -n $PULUMI_LANGHOST_MODVER ]] || return 1
  step "Downloading $LANGHOST_MOD@$PULUMI_LANGHOST_MODVER, pkg and sdk v$PULUMI_VERSION"
  lh=$(fetch_module "$LANGHOST_MOD@$PULUMI_LANGHOST_MODVER") || return 1
  pkg=$(fetch_module "$PULUMI_PKG@v$PULUMI_VERSION") || return 1
  sdk=$(fetch_module "$PULUMI_SDK@v$PULUMI_VERSION") || return 1
  copy_tree "$sdk" "$WORK/pulumi/sdk"
  copy_tree "$pkg" "$WORK/pulumi/pkg"
  copy_tree "$lh" "$WORK/pulumi/sdk/python/cmd/pulumi-language-python"
  printf '%s' "$WORK/pulumi"
}

langhost_built() {
  local dir tree t mod
  dir=$(cache_dir pulumi-language-python "$PULUMI_VERSION")
  if [[ -x $dir/pulumi-language-python && $(have_version python "$dir/pulumi-language-python") == "$PULUMI_VERSION" ]]; then
    ok "pulumi-language-python v$PULUMI_VERSION found in $dir"
  else
    if ! tree=$(langhost_tree); then
      MISSING+=("python: $LANGHOST_MOD is not served by the Go module proxy; seed a pulumi-language-python v$PULUMI_VERSION into $dir, or install pulumi normally")
      return 0
    fi
    mod=$tree/sdk/python/cmd/pulumi-language-python
    step "Downloading the modules of pulumi-language-python"
    t=$SECONDS
    (cd "$mod" && quiet "$GO" mod download)
    ok "Downloaded ($(secs "$t"))"
    step "Building pulumi-language-python v$PULUMI_VERSION"
    t=$SECONDS
    (cd "$mod" && quiet "${GO_BUILD[@]}" -ldflags "-s -w -X $VERSION_PKG=v$PULUMI_VERSION" \
      -o "$WORK/pulumi-language-python" .)
    store "$dir" python "$PULUMI_VERSION" "$WORK/pulumi-language-python"
    ok "Built pulumi-language-python v$PULUMI_VERSION ($(secs "$t"))"
  fi
  install_file "$dir/pulumi-language-python" "$BIN/pulumi-language-python"
}

# --- resource plugins, each built in its own module context ---------------------------
# provider_built NAME VERSION MODULE MODVER SRCVAR VERSIONVAR
provider_built() {
  local name=$1 ver=$2 mod=$3 modver=$4 verpkg=$5 dir moddir t
  dir=$(cache_dir "pulumi-resource-$name" "$ver")
  if [[ -x $dir/pulumi-resource-$name && $(have_version "$name" "$dir/pulumi-resource-$name") == "$ver" ]]; then
    ok "pulumi-resource-$name v$ver found in $dir"
  else
    if [[ -z $modver ]]; then
      MISSING+=("$name: $mod is not served by the Go module proxy; seed pulumi-resource-$name v$ver into $dir, or install pulumi normally")
      return 0
    fi
    step "Downloading $mod@$modver"
    if ! moddir=$(fetch_module "$mod@$modver"); then
      MISSING+=("$name: $mod@$modver is not served by the Go module proxy; seed pulumi-resource-$name v$ver into $dir, or install pulumi normally")
      return 0
    fi
    copy_tree "$moddir" "$WORK/$name"
    step "Downloading the modules of pulumi-resource-$name v$ver"
    t=$SECONDS
    (cd "$WORK/$name" && quiet "$GO" mod download)
    ok "Downloaded ($(secs "$t"))"
    step "Building pulumi-resource-$name v$ver"
    t=$SECONDS
    (cd "$WORK/$name" && quiet "${GO_BUILD[@]}" -ldflags "-s -w -X $verpkg=v$ver" \
      -o "$WORK/pulumi-resource-$name" "./cmd/pulumi-resource-$name")
    store "$dir" "$name" "$ver" "$WORK/pulumi-resource-$name"
    ok "Built pulumi-resource-$name v$ver ($(secs "$t"))"
  fi
  plugin_installed "$name" "$ver" "$dir/pulumi-resource-$name"
}

plugin_installed() {
  local name=$1 ver=$2 file=$3 dest
  dest=$(plugin_path "$name" "$ver")
  if [[ -x $dest && ! -e ${dest%/*}.partial ]] && cmp -s "$file" "$dest" &&
    [[ $(have_version "$name" "$dest") == "$ver" ]]; then
    ok "Plugin resource $name v$ver installed"
    return 0
  fi
  [[ -x $BIN/pulumi ]] || die "installing a plugin needs $BIN/pulumi: run with cli in --only first"
  step "Installing plugin resource $name v$ver into $PULUMI_HOME"
  quiet "$BIN/pulumi" plugin install resource "$name" "$ver" --file "$file" --reinstall
  touch "$MANIFEST"
  { grep -v "^$name " "$MANIFEST" || true; printf '%s %s %s\n' "$name" "$ver" "$(sha_of "$dest")"; } >"$MANIFEST.tmp"
  mv -f "$MANIFEST.tmp" "$MANIFEST"
  updated "Installed plugin resource $name v$ver"
}

start=$SECONDS
# A pulumi installed the normal way (a laptop) brings its language host and fetches
# plugins itself: use it. The source build is the fallback (or forced).
sys_pulumi=$(command -v pulumi || true)
if [[ -n $sys_pulumi && $(readlink -f "$sys_pulumi") != "$(readlink -f "$BIN")"/* && -z ${TOOLCHAIN_FORCE_BUILD:-} ]]; then
  ok "Using the installed $sys_pulumi ($("$sys_pulumi" version 2>/dev/null || echo unknown version)); set TOOLCHAIN_FORCE_BUILD=1 to build .tools/ instead"
  echo unchanged
  exit 0
fi
if wants cli || wants command || wants proxmoxve; then
  if wants cli || [[ ! -x $BIN/pulumi ]]; then cli_built; fi
fi
if wants python; then
  install_exec_shim
  langhost_built
fi
wants command && provider_built command "$COMMAND_VERSION" "$COMMAND_MOD" "$COMMAND_MODVER" "$COMMAND_VERVAR"
wants proxmoxve && provider_built proxmoxve "$PROXMOXVE_VERSION" "$PROXMOXVE_MOD" "$PROXMOXVE_MODVER" "$PROXMOXVE_VERVAR"

if [[ ${#MISSING[@]} -gt 0 ]]; then
  for m in "${MISSING[@]}"; do warn "$m"; done
  msg="toolchain incomplete: ${#MISSING[@]} component(s) could not be built"
  [[ $BEST_EFFORT -eq 1 ]] || die "$msg (see above; --only narrows the set, --best-effort goes on)"
  warn "$msg; going on (--best-effort)"
else
  ok "Toolchain ready in ${TOOLCHAIN_DIR#"$REPO"/} ($(secs "$start"))"
fi
if [[ ${#UPDATED[@]} -gt 0 ]]; then echo changed; else echo unchanged; fi
