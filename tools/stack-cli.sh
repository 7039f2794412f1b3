#!/usr/bin/env bash
# Sourced by the tools that drive the pulumi CLI on one stack (recover.sh, adopt-containers.sh).

# stack_cli_init: after argument parsing, with $stack ("" = the selected stack). Sets root (and
# cds there), py (the project's venv python), sargs (--non-interactive [--stack NAME]), stack
# (resolved) and project (Pulumi.yaml's name).
stack_cli_init() {
  command -v pulumi >/dev/null || die "no pulumi on PATH: source tools/pulumi-env.sh (or make toolchain)"
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  cd "$root" || die "cannot enter $root"
  py=$root/.venv/bin/python
  [[ -x $py ]] || die "no .venv: run make setup"
  sargs=(--non-interactive)
  [[ -z $stack ]] || sargs+=(--stack "$stack")
  if [[ -z $stack ]]; then
    stack=$(pulumi stack --show-name --non-interactive 2>/dev/null) ||
      die "no stack selected: pass --stack NAME (make recover/adopt STACK=name), or pulumi stack select NAME"
  fi
  # shellcheck disable=SC2034  # read by the tool that sources this
  project=$(sed -n 's/^name: *//p' Pulumi.yaml)
}
