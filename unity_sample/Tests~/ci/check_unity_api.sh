#!/usr/bin/env bash
# Compiles the package's Unity-facing code (Runtime/Unity, Runtime/NetMQ, Editor, and the sample
# scripts of Samples~) with Mono's C#
# compiler against a stand-in of the Unity and NetMQ API (standin/: written from Unity's scripting
# reference and NetMQ's source; compile-only, every body `throw null`) and against the core.
# It is a compile check, not Unity: it cannot see what Unity's own compiler or its importer would
# add, and nothing is run.
#
#   unity_sample/Tests~/ci/check_unity_api.sh OUTDIR
#
# The assemblies are split as the package's asmdef files split them, and each is given only the
# references its asmdef names ("references", and "precompiledReferences" where it overrides them),
# so an asmdef that lacks a reference fails here as it would in Unity. Each is compiled for the
# configurations Unity compiles it for:
#   editor      UNITY_EDITOR + UNITY_STANDALONE, UnityEditor.dll referenced (Unity gives runtime
#               assemblies UnityEditor in the editor; the Editor-only assembly is built only here)
#   standalone  a desktop player: UNITY_STANDALONE, no UnityEditor
#   mobile      a player that is neither (UNITY_ANDROID): the #else branches
# KSDIFF_NETMQ is defined in all three (it is a project-wide scripting define; without it the
# Ksdiff.NetMQ assembly is simply not compiled, its asmdef's define constraint).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
pkg="$(cd "$here/../.." && pwd)"
out="${1:?usage: check_unity_api.sh OUTDIR}"
mcs="${MCS:-mcs}"
mkdir -p "$out"
# build.sh's flags: C# 7.2 (what mcs reads; Unity 2021.3 reads more, so the package stays within it)
# and every warning an error (a warning here is one a Unity user sees in the console).
flags=(-nologo -langversion:7.2 -debug -warn:4 -warnaserror+)

# The stand-ins: UnityEngine.dll, UnityEditor.dll (references UnityEngine), AsyncIO.dll and
# NetMQ.dll (separate DLLs, as NuGetForUnity installs them). Their own checks are as strict.
sd="$out/standin"
mkdir -p "$sd"
"$mcs" "${flags[@]}" -target:library -out:"$sd/UnityEngine.dll" "$here/standin/UnityEngine.cs"
"$mcs" "${flags[@]}" -target:library -out:"$sd/UnityEditor.dll" -r:"$sd/UnityEngine.dll" "$here/standin/UnityEditor.cs"
"$mcs" "${flags[@]}" -target:library -out:"$sd/AsyncIO.dll" "$here/standin/AsyncIO.cs"
"$mcs" "${flags[@]}" -target:library -out:"$sd/NetMQ.dll" "$here/standin/NetMQ.cs"

# The core, exactly as build.sh builds it.
mapfile -t core < <(find "$pkg/Runtime/Core" -name '*.cs' | sort)
"$mcs" "${flags[@]}" -optimize+ -target:library -out:"$out/Ksdiff.Core.dll" "${core[@]}"

# "name|references,...|precompiledReferences,...|overrideReferences|noEngineReferences" of an asmdef.
asmdef() {
  "${PYTHON:-python3}" - "$1" <<'EOF'
import json, sys
a = json.load(open(sys.argv[1], encoding="utf-8-sig"))
print("|".join([a["name"], ",".join(a.get("references", [])), ",".join(a.get("precompiledReferences", [])),
                str(a.get("overrideReferences", False)).lower(), str(a.get("noEngineReferences", False)).lower()]))
EOF
}

# compile CONFIG DIR: the assembly of DIR's asmdef into $out/CONFIG/<name>.dll.
compile() {
  local config="$1" dir="$2" def
  def="$(find "$dir" -maxdepth 1 -name '*.asmdef' | head -n 1)"
  local name refs pre override noengine
  IFS='|' read -r name refs pre override noengine < <(asmdef "$def")
  local dst="$out/$config"
  mkdir -p "$dst"
  local args=() ref dll
  case "$config" in
    editor) args+=(-define:UNITY_EDITOR -define:UNITY_STANDALONE) ;;
    standalone) args+=(-define:UNITY_STANDALONE) ;;
    mobile) args+=(-define:UNITY_ANDROID) ;;
  esac
  args+=(-define:KSDIFF_NETMQ)
  if [ "$noengine" != true ]; then
    args+=(-r:"$sd/UnityEngine.dll")
    [ "$config" = editor ] && args+=(-r:"$sd/UnityEditor.dll")
  fi
  IFS=',' read -r -a refs <<< "$refs"
  for ref in "${refs[@]}"; do
    [ -n "$ref" ] || continue
    if [ "$ref" = Ksdiff.Core ]; then dll="$out/Ksdiff.Core.dll"; else dll="$dst/$ref.dll"; fi
    [ -f "$dll" ] || { echo "$def: references $ref, which is not built before it" >&2; exit 1; }
    args+=(-r:"$dll")
  done
  # A precompiled DLL is referenced only where the asmdef names it (overrideReferences); without
  # the override Unity gives every auto-referenced DLL, but none of this package's needs one.
  if [ "$override" = true ]; then
    IFS=',' read -r -a pre <<< "$pre"
    for ref in "${pre[@]}"; do
      [ -n "$ref" ] || continue
      [ -f "$sd/$ref" ] || { echo "$def: precompiled reference $ref has no stand-in" >&2; exit 1; }
      args+=(-r:"$sd/$ref")
    done
  fi
  local sources
  mapfile -t sources < <(find "$dir" -name '*.cs' | sort)
  echo "== $config: $name"
  "$mcs" "${flags[@]}" -target:library -out:"$dst/$name.dll" "${args[@]}" "${sources[@]}"
}

# samples CONFIG: a sample's scripts, as Unity compiles them once imported into Assets/ (they have
# no asmdef): into Assembly-CSharp, which references every auto-referenced assembly of the package.
samples() {
  local config="$1" dir
  local dst="$out/$config" args=(-define:KSDIFF_NETMQ -r:"$sd/UnityEngine.dll" -r:"$out/Ksdiff.Core.dll")
  args+=(-r:"$dst/Ksdiff.Unity.dll" -r:"$dst/Ksdiff.NetMQ.dll")
  case "$config" in
    editor) args+=(-define:UNITY_EDITOR -define:UNITY_STANDALONE -r:"$sd/UnityEditor.dll" -r:"$dst/Ksdiff.Editor.dll") ;;
    standalone) args+=(-define:UNITY_STANDALONE) ;;
    mobile) args+=(-define:UNITY_ANDROID) ;;
  esac
  for dir in "$pkg"/Samples~/*/; do
    local sources
    mapfile -t sources < <(find "$dir" -name '*.cs' | sort)
    [ "${#sources[@]}" -gt 0 ] || continue
    echo "== $config: sample $(basename "$dir")"
    "$mcs" "${flags[@]}" -target:library -out:"$dst/Sample-$(basename "$dir").dll" "${args[@]}" "${sources[@]}"
  done
}

for config in editor standalone mobile; do
  compile "$config" "$pkg/Runtime/Unity"
  compile "$config" "$pkg/Runtime/NetMQ"
  [ "$config" = editor ] && compile "$config" "$pkg/Editor"
  samples "$config"
done
echo "OK: Runtime/Unity, Runtime/NetMQ, Editor and the samples compile against the Unity/NetMQ stand-in"
