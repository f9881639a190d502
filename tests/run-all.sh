#!/usr/bin/env bash
# The whole test suite, as the README's second command and CI run it: install what is
# missing, then through ctest (1) the normal build, (2) the ASan+UBSan build, (3) the libFuzzer
# targets for a short while. Exits non-zero when any test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
third_party/bootstrap.sh
jobs=$(nproc)

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure -j2 --timeout 900

cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DROUTE_SANITIZE=ON
cmake --build build-asan -j"$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -j2 --timeout 900 -LE fuzz

CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DROUTE_FUZZ=ON
cmake --build build-fuzz -j"$jobs"
# Each target is one process on one core for ROUTE_FUZZ_SECONDS (20 s): two at a time.
ctest --test-dir build-fuzz --output-on-failure -j2 -L fuzz
