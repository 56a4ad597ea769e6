#!/usr/bin/env bash
# Builds the package's C# core, its tests and the decode benchmark with Mono's C# compiler
# (Debian: mono-mcs). Unity is not needed: Runtime/Core and Tests/Editor use no UnityEngine.
#
#   unity_sample/Tests~/ci/build.sh OUTDIR      then   mono OUTDIR/KsdiffTests.exe
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
pkg="$(cd "$here/../.." && pwd)"
out="${1:?usage: build.sh OUTDIR}"
mcs="${MCS:-mcs}"
mkdir -p "$out"
# C# 7.2 is what mcs reads; Unity's compiler reads that too, so the core stays within it.
flags=(-nologo -langversion:7.2 -debug -warn:4 -warnaserror+)

mapfile -t core < <(find "$pkg/Runtime/Core" -name '*.cs' | sort)
mapfile -t tests < <(find "$pkg/Tests/Editor" -name '*.cs' | sort)

"$mcs" "${flags[@]}" -optimize+ -target:library -out:"$out/Ksdiff.Core.dll" "${core[@]}"
# Mono resolves DllImport("libzmq") through this map (Debian's libzmq5 ships libzmq.so.5 only).
cp "$here/Ksdiff.Core.dll.config" "$out/Ksdiff.Core.dll.config"
"$mcs" "${flags[@]}" -target:exe -out:"$out/KsdiffTests.exe" -r:"$out/Ksdiff.Core.dll" -r:System.Core \
  "${tests[@]}" "$here/MiniNUnit.cs" "$here/TestMain.cs"
"$mcs" "${flags[@]}" -optimize+ -target:exe -out:"$out/KsdiffBench.exe" -r:"$out/Ksdiff.Core.dll" "$here/Bench.cs"
