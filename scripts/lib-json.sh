#!/usr/bin/env bash
# JSON output helpers (pure bash: containers may have neither python3 nor jq yet).
# Sourced after lib.sh, never run.


# json_str "text": print text as a JSON string literal.
json_str() {
  local s=$1 out="" c i
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\t'/\\t}
  s=${s//$'\r'/\\r}
  if [[ $s == *[$'\001'-$'\037']* ]]; then
    for ((i = 0; i < ${#s}; i++)); do
      c=${s:i:1}
      if [[ $c == [$'\001'-$'\037'] ]]; then
        printf -v c '\\u%04x' "'$c"
      fi
      out+=$c
    done
    s=$out
  fi
  printf '"%s"' "$s"
}

# json_str_or_null "text": a JSON string, or null when text is empty.
json_str_or_null() { if [[ -n $1 ]]; then json_str "$1"; else printf 'null'; fi; }

# json_bool "true|false|1|0|yes|no": a JSON boolean.
json_bool() { case ${1,,} in true | 1 | yes) printf 'true' ;; *) printf 'false' ;; esac; }

# json_arr "a" "b" ...: a JSON array of strings.
json_arr() {
  local first=1 x
  printf '['
  for x in "$@"; do
    ((first)) || printf ','
    first=0
    json_str "$x"
  done
  printf ']'
}

# json_raw_arr '{"a":1}' '2' ...: a JSON array of values that are already JSON.
json_raw_arr() {
  local IFS=,
  printf '[%s]' "$*"
}

# json_obj key value key value ...: a JSON object; values must already be JSON.
json_obj() {
  local first=1
  printf '{'
  while [[ $# -ge 2 ]]; do
    ((first)) || printf ','
    first=0
    json_str "$1"
    printf ':%s' "$2"
    shift 2
  done
  printf '}'
}

