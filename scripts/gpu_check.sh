#!/usr/bin/env bash
# One command for a GPU machine: build the extension (CUDA included), run every GPU parity test
# (the `gpu` marker: cuda backend, triton backend), then every GPU benchmark of every backend, and
# print one markdown table of timings and useful TFLOP/s.
#
#   scripts/gpu_check.sh            # from the repository root
#   OUT=/tmp/gpu scripts/gpu_check.sh   # where bench.json / bench.md / test logs go
#   ALL_BENCH=1 scripts/gpu_check.sh    # also the CPU benchmarks
# Exit status: non-zero if the build or any parity test failed (benchmarks still run).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-build/gpu_check}"
mkdir -p "$OUT"
status=0

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python - <<'PY'
import transgan_fast as tf
from transgan_fast.ops import _dispatch
for name, info in _dispatch.backends().items():
    print(f"  {name:7s} built={info['built']} usable={info['usable']} {info.get('reason') or ''}")
PY

echo "== build (python setup.py build_ext --inplace)"
start=$(date +%s)
if ! python setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
  echo "build FAILED (see $OUT/build.log)"; tail -30 "$OUT/build.log"; exit 1
fi
echo "  built in $(( $(date +%s) - start )) s; register/spill report:"
grep -h "bytes spill" "$OUT/build.log" | sort | uniq -c | sed 's/^/   /'

echo "== GPU parity tests"
tests=(tests/)
python -m pytest "${tests[@]}" -m gpu -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -40
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
triton_files=$(ls tests/test_triton*.py 2>/dev/null || true)
if [ -n "$triton_files" ]; then
  python -m pytest $triton_files -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/tests_triton.log" | tail -20
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

echo "== benchmarks"
sel=(-m gpu)
[ "${ALL_BENCH:-0}" = "1" ] && sel=()
python -m pytest benchmarks/ -o python_files='bench_*.py test_*.py' --benchmark-only "${sel[@]}" -q \
  -p no:cacheprovider --benchmark-json="$OUT/bench.json" --benchmark-columns=mean,stddev,rounds \
  2>&1 | tail -15

echo "== table"
[ -f "$OUT/bench.json" ] && python - "$OUT/bench.json" <<'PY' | tee "$OUT/bench.md"
import json, sys
from collections import defaultdict
data = json.load(open(sys.argv[1]))
groups = defaultdict(dict)
for b in data["benchmarks"]:
    impl = b.get("extra_info", {}).get("backend") or b.get("param") or b["name"]
    groups[b["group"] or b["name"]][impl] = (b["stats"]["mean"], b.get("extra_info", {}))
print("| case | implementation | mean (ms) | vs ref | vs fastest peer | TFLOP/s | % of matmul |")
print("|---|---|---:|---:|---:|---:|---:|")
ours = ("cuda", "triton", "cpu")
for g in sorted(groups):
    impls = groups[g]
    ref = impls.get("ref", (None,))[0]
    peers = [m for k, (m, _) in impls.items() if k not in ours and k != "ref"]
    best = min(peers) if peers else None
    for impl, (mean, info) in sorted(impls.items(), key=lambda kv: kv[1][0]):
        vs_ref = f"{ref / mean:.2f}x" if ref else "-"
        vs_peer = f"{best / mean:.2f}x" if best and impl in ours else "-"
        tfl = info.get("tflops", "-")
        pct = info.get("pct_matmul", "-")
        print(f"| {g} | {impl} | {mean * 1e3:.3f} | {vs_ref} | {vs_peer} | {tfl} | {pct} |")
PY
echo "== parity tests: $([ $status -eq 0 ] && echo PASSED || echo FAILED)"
exit $status
