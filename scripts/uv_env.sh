# shellcheck shell=sh
# Sourced by the Makefile and scripts/dist.sh: hands pip's configured package sources to uv, which
# reads no pip.conf, so that uv installs the same set pip would on a machine whose pip also looks in
# a local wheel folder or local indexes (where a CPU build of torch may lie).
#   . scripts/uv_env.sh [PYTHON]    PYTHON: the interpreter whose pip to ask (python3)
_uv_py=${1:-python3}
_uv_list() {  # $1: pip's setting (env value or config key); $2: the separator uv wants
  printf '%s' "$1" | tr -s ' \t\n' "$2" | sed "s/^$2//; s/$2\$//"
}
[ -n "${UV_FIND_LINKS:-}" ] || UV_FIND_LINKS=$(_uv_list "${PIP_FIND_LINKS:-$("$_uv_py" -m pip config get \
  global.find-links 2>/dev/null)}" ,)  # uv: commas
[ -n "${UV_EXTRA_INDEX_URL:-}" ] || UV_EXTRA_INDEX_URL=$(_uv_list "${PIP_EXTRA_INDEX_URL:-$("$_uv_py" -m pip config \
  get global.extra-index-url 2>/dev/null)}" ' ')  # uv: spaces
# pip takes each version from whichever source has it; uv's default stops at the first that has the package
UV_INDEX_STRATEGY=${UV_INDEX_STRATEGY:-unsafe-best-match}
export UV_INDEX_STRATEGY
if [ -n "$UV_FIND_LINKS" ]; then export UV_FIND_LINKS; else unset UV_FIND_LINKS; fi
if [ -n "$UV_EXTRA_INDEX_URL" ]; then export UV_EXTRA_INDEX_URL; else unset UV_EXTRA_INDEX_URL; fi
unset _uv_py
