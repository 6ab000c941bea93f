#!/usr/bin/env bash
# Proves the Dockerfile's build stage builds, without Docker (base images cannot be pulled
# here): copies exactly what the stage COPYs from the build context into an empty directory laid
# out as its WORKDIR, runs the stage's RUN lines there with bash, and checks that every file the
# runtime stage takes with `COPY --from=build` exists. A source file the build needs but the
# Dockerfile does not copy fails the build here as it would in `docker build`.
#
#   bash deploy/dockerfile-build-check.sh [CACHE_TARGET_DIR]
#
# CACHE_TARGET_DIR (optional) becomes the copy's `target/` (a symlink), so already-built release
# dependencies are reused; the gateway binary in it is rebuilt from the copy and stripped.
# Dependencies come from the local registry cache (CARGO_NET_OFFLINE) when they are there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dockerfile="$root/Dockerfile"
cache="${1:-}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The build stage: from the first FROM up to the next FROM; continuation lines joined.
mapfile -t lines < <(sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$dockerfile" \
  | awk '/^FROM /{n++} n==1' | grep -v '^[[:space:]]*#')
workdir=""
ctx="$work/context-copy"
mkdir -p "$ctx"
runs=()
for line in "${lines[@]}"; do
  read -r -a words <<<"$line"
  case "${words[0]:-}" in
    WORKDIR) workdir="${words[1]}" ;;
    COPY)
      args=("${words[@]:1}")
      if [[ "${args[0]}" == --* ]]; then
        echo "unsupported COPY flag in the build stage: $line" >&2; exit 1
      fi
      dest="${args[-1]}"
      for src in "${args[@]:0:${#args[@]}-1}"; do
        [ -e "$root/$src" ] || { echo "COPY source $src does not exist" >&2; exit 1; }
        if [ -d "$root/$src" ]; then
          mkdir -p "$ctx/$dest" && cp -a "$root/$src/." "$ctx/$dest/"
        elif [[ "$dest" == */ ]]; then
          mkdir -p "$ctx/$dest" && cp -a "$root/$src" "$ctx/$dest"
        else
          mkdir -p "$(dirname "$ctx/$dest")" && cp -a "$root/$src" "$ctx/$dest"
        fi
      done
      ;;
    RUN) runs+=("${line#RUN }") ;;
  esac
done
[ "$workdir" = "/src" ] || { echo "expected WORKDIR /src in the build stage, found '$workdir'" >&2; exit 1; }
[ ${#runs[@]} -gt 0 ] || { echo "the build stage has no RUN line" >&2; exit 1; }
echo "copied into the build context: $(cd "$ctx" && ls -A | tr '\n' ' ')"
if [ -n "$cache" ]; then
  mkdir -p "$cache"
  ln -s "$(cd "$cache" && pwd)" "$ctx/target"
fi
export CARGO_NET_OFFLINE="${CARGO_NET_OFFLINE:-true}"
unset CARGO_TARGET_DIR
for cmd in "${runs[@]}"; do
  echo "+ $cmd"
  (cd "$ctx" && bash -euo pipefail -c "$cmd")
done

# Every file the runtime stage takes from the build stage exists.
grep -E '^COPY --from=build ' "$dockerfile" | while read -r _ _ src _; do
  rel="${src#"$workdir"/}"
  [ -f "$ctx/$rel" ] || { echo "COPY --from=build $src: no such file after the build" >&2; exit 1; }
  echo "built: $src ($(stat -Lc %s "$ctx/$rel") bytes)"
done
"$ctx/target/release/ews-gateway" --version
echo "Dockerfile build stage: OK"
