#!/usr/bin/env bash
# Build llama.cpp's `llama-server` from the llama.cpp source vendored in the
# llama-cpp-python source distribution, so the peer runs the very same llama.cpp
# revision, built with the same CPU flags (scripts/ggml_cpu_flags.sh), that HelixFlow
# links against.
#
# Usage: benchmarks/build_llama_server.sh            (from anywhere in the repo)
# Env:   LLAMA_CPP_PYTHON_VERSION  sdist version (default 0.3.36, the pinned one)
#        BUILD_JOBS                parallel compile jobs (default: nproc)
#        PYTHON                    python with pip (default: .venv/bin/python)
#
# The build goes to .build/llama-server/ (git-ignored; never commit the binary).
# It is idempotent: when the binary exists, nothing is rebuilt. The last line of
# output is the binary's path. It downloads only the sdist from PyPI: the prebuilt
# web UI download (LLAMA_USE_PREBUILT_UI) is switched off, and so is OpenSSL (the
# server listens on plain HTTP on 127.0.0.1). LLAMA_CURL is not passed: this
# llama.cpp revision has dropped it (it only prints a deprecation warning).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
BUILD_ROOT="${REPO_ROOT}/.build/llama-server"
SRC_DIR="${BUILD_ROOT}/src"
CMAKE_DIR="${BUILD_ROOT}/cmake-build"
BIN="${BUILD_ROOT}/bin/llama-server"
JOBS="${BUILD_JOBS:-$(nproc)}"
PYTHON="${PYTHON:-${REPO_ROOT}/.venv/bin/python}"

if [[ -x "${BIN}" ]]; then
    echo "llama-server already built: ${BIN}" >&2
    echo "${BIN}"
    exit 0
fi

mkdir -p "${BUILD_ROOT}/sdist" "${BUILD_ROOT}/bin"

SDIST="$(ls "${BUILD_ROOT}/sdist"/llama_cpp_python-"${VERSION}".tar.gz 2>/dev/null || true)"
if [[ -z "${SDIST}" ]]; then
    echo "downloading llama-cpp-python==${VERSION} source distribution" >&2
    "${PYTHON}" -m pip download --no-binary :all: --no-deps \
        "llama-cpp-python==${VERSION}" -d "${BUILD_ROOT}/sdist" >&2
    SDIST="$(ls "${BUILD_ROOT}/sdist"/llama_cpp_python-"${VERSION}".tar.gz)"
fi

if [[ ! -f "${SRC_DIR}/vendor/llama.cpp/CMakeLists.txt" ]]; then
    rm -rf "${SRC_DIR}"
    mkdir -p "${SRC_DIR}"
    tar -xzf "${SDIST}" -C "${SRC_DIR}" --strip-components=1
fi

echo "configuring llama.cpp (${SRC_DIR}/vendor/llama.cpp)" >&2
cmake -S "${SRC_DIR}/vendor/llama.cpp" -B "${CMAKE_DIR}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    $("${REPO_ROOT}/scripts/ggml_cpu_flags.sh") >&2

echo "building llama-server with ${JOBS} jobs (about 6 minutes on 2 cores)" >&2
cmake --build "${CMAKE_DIR}" --config Release --target llama-server -j "${JOBS}" >&2

BUILT="$(find "${CMAKE_DIR}" -type f -name llama-server -perm -u+x | head -n 1)"
if [[ -z "${BUILT}" ]]; then
    echo "build finished but no llama-server binary was found under ${CMAKE_DIR}" >&2
    exit 1
fi
cp "${BUILT}" "${BIN}.tmp"
mv "${BIN}.tmp" "${BIN}"
echo "llama-server built: ${BIN}" >&2
echo "${BIN}"
