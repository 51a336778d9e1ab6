#!/usr/bin/env bash
# Print the CMake flags that build llama.cpp's CPU backend for this machine's x86 ISA
# extensions, with AMX left out.
#
# Why not GGML_NATIVE (-march=native)? On virtual machines that advertise AMX in
# /proc/cpuinfo without letting a process use it, ggml's AMX matrix kernels die with a
# general protection fault on the first decode (seen on Sapphire Rapids guests). Listing
# the extensions one by one keeps AVX2/AVX-512/VNNI and leaves AMX out. On other
# architectures nothing is printed and llama.cpp's native default applies.
set -euo pipefail

if [[ "$(uname -m)" != "x86_64" ]]; then
    exit 0
fi
flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
has() { [[ "${flags}" == *" $1 "* ]]; }

args=(-DGGML_NATIVE=OFF)
opt() { if has "$2"; then args+=("-D$1=ON"); else args+=("-D$1=OFF"); fi; }
opt GGML_SSE42 sse4_2
opt GGML_AVX avx
opt GGML_AVX2 avx2
opt GGML_FMA fma
opt GGML_F16C f16c
opt GGML_BMI2 bmi2
opt GGML_AVX_VNNI avx_vnni
opt GGML_AVX512 avx512f
opt GGML_AVX512_VBMI avx512vbmi
opt GGML_AVX512_VNNI avx512_vnni
opt GGML_AVX512_BF16 avx512_bf16
args+=(-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
echo "${args[*]}"
