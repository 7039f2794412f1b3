#!/usr/bin/env bash
# Files: atomic, change-only writes.
# Sourced after lib.sh, never run.


# write_if_changed FILE MODE: replace FILE with stdin atomically (temp file in the
# same directory, then rename) only if the content differs. Returns 0 if written,
# 1 if unchanged.
write_if_changed() {
  local file=$1 mode=$2 tmp
  tmp=$(mktemp "$(dirname "$file")/.$(basename "$file").XXXXXX")
  cat >"$tmp"
  if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
    rm -f "$tmp"
    return 1
  fi
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$file"
  return 0
}

