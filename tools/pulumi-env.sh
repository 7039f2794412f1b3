#!/usr/bin/env bash
# Sourced: puts the project's Pulumi toolchain first on PATH, offline and quiet.
# A pulumi already installed on the machine is used (with its own plugins) when
# .tools/ has no CLI; see tools/toolchain.sh.
_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -x $_root/.tools/bin/pulumi ]]; then
  export PATH="$_root/.tools/bin:$PATH"
elif ! command -v uv >/dev/null && [[ -x $_root/.tools/bin/uv ]]; then
  # Pulumi.yaml's `toolchain: uv`: the language host of an installed pulumi needs uv on PATH
  export PATH="$_root/.tools/bin:$PATH"
fi
if [[ -x $_root/.tools/bin/pulumi ]]; then
  export PULUMI_HOME="$_root/.tools/pulumi"
  export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
  export PULUMI_IGNORE_AMBIENT_PLUGINS=true
fi
export PULUMI_SKIP_UPDATE_CHECK=true
unset _root
