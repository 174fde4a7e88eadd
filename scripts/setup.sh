#!/usr/bin/env bash
# Create or update the virtual environment in .venv (or $SEEKMOE_VENV).
#   scripts/setup.sh        what running seekmoe needs (and Debian's espeak-ng for /v1/audio/speech, installed with
#                           apt-get when root)
#   scripts/setup.sh test   plus what the tests need (transformers for parity, pytest, ruff, hypothesis, lm-eval, the
#                           client packages with openai-node from npm when npm is there, and Debian's chromium for
#                           the chat page's browser test, installed with apt-get when root)
#                           and, for the Java and C++ SDK tests, Debian's JDK, gson, g++, CMake, libcurl and
#                           nlohmann-json, installed the same way
# torch is installed first as the CPU build 2.13.0, so no later requirement can pull a multi-GB CUDA build;
# a torch already in the environment is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${SEEKMOE_VENV:-.venv}
python=${PYTHON:-python3}

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    # A local wheel (pip's find-links) is used as it is; elsewhere PyTorch's CPU index serves the CPU build.
    if "${pip[@]}" download -q --no-deps --no-index -d "$(mktemp -d)" torch==2.13.0 >/dev/null 2>&1; then
        "${pip[@]}" install -q torch==2.13.0
    else
        "${pip[@]}" install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    fi
fi

extras=""
[ "${1:-}" = "test" ] && extras="[test]"
if ! command -v espeak-ng >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            espeak-ng; } >/dev/null || echo "setup.sh: apt-get could not install espeak-ng; /v1/audio/speech answers 503" >&2
    else
        echo "setup.sh: no espeak-ng; as root: apt-get install espeak-ng (else /v1/audio/speech answers 503)" >&2
    fi
fi
if [ "${1:-}" = "test" ] && ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            chromium; } >/dev/null || echo "setup.sh: apt-get could not install chromium; the browser test will skip" >&2
    else
        echo "setup.sh: no chromium; as root: apt-get install chromium (else tests/test_chat_page.py is skipped)" >&2
    fi
fi
# The Java and C++ SDKs' tests (tests/test_sdk_java.py, tests/test_sdk_cpp.py): a JDK and Debian's gson; a C++
# compiler, CMake, libcurl and nlohmann-json
if [ "${1:-}" = "test" ]; then
    sdk_packages=()
    command -v javac >/dev/null 2>&1 || sdk_packages+=(default-jdk-headless)
    [ -r /usr/share/java/gson.jar ] || sdk_packages+=(libgoogle-gson-java)
    command -v c++ >/dev/null 2>&1 || sdk_packages+=(g++)
    command -v cmake >/dev/null 2>&1 || sdk_packages+=(cmake)
    command -v make >/dev/null 2>&1 || sdk_packages+=(make)
    command -v curl-config >/dev/null 2>&1 || sdk_packages+=(libcurl4-openssl-dev)
    [ -r /usr/include/nlohmann/json.hpp ] || sdk_packages+=(nlohmann-json3-dev)
    if [ ${#sdk_packages[@]} -gt 0 ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                "${sdk_packages[@]}"; } >/dev/null \
                || echo "setup.sh: apt-get could not install ${sdk_packages[*]}; the SDK tests will skip" >&2
        else
            echo "setup.sh: missing ${sdk_packages[*]}; as root: apt-get install ${sdk_packages[*]} (else" \
                 "tests/test_sdk_java.py and tests/test_sdk_cpp.py skip)" >&2
        fi
    fi
fi
"${pip[@]}" install -q -e ".${extras}"
if [ "${1:-}" = "test" ]; then
    # openai-node for tests/clients/test_openai_node.py, at the version package-lock.json pins
    if command -v npm >/dev/null 2>&1; then
        npm ci --prefix tests/clients/node --no-audit --no-fund --loglevel=error >/dev/null \
            || echo "setup.sh: npm ci failed; tests/clients/test_openai_node.py will skip" >&2
    else
        echo "setup.sh: no node/npm; tests/clients/test_openai_node.py will skip" >&2
    fi
fi
"$venv/bin/python" -c "import torch, seekmoe; print('seekmoe', seekmoe.__version__, '| torch', torch.__version__)"
