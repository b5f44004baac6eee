#!/usr/bin/env bash
# Installs everything the README's commands need, at the versions the tests last passed with:
#   bash install.sh                  the library and test packages (pip, into the active Python)
#                                    and Debian's Chromium for the gallery test (apt: root or sudo)
#   VADER_BROWSER=no bash install.sh the Python packages only; needs no root
# Without root, a Chromium and chromedriver of the same version from anywhere can be used instead:
# point VADER_CHROMIUM and VADER_CHROMEDRIVER at them when running the tests.
# The versions come from constraints.txt; docs/environment.md says how to regenerate it.
set -euo pipefail
cd "$(dirname "$0")"

python -m pip install -e ".[dev]" -c constraints.txt

# tests/test_gallery.py opens the evaluation gallery in headless Chromium through Selenium, with
# Debian's browser and its matching driver, so Selenium Manager downloads nothing.
chromium=${VADER_CHROMIUM:-/usr/bin/chromium}
driver=${VADER_CHROMEDRIVER:-/usr/bin/chromedriver}
if [ "${VADER_BROWSER:-yes}" = no ] || { [ -x "$chromium" ] && [ -x "$driver" ]; }; then
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    sudo=""
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo="sudo"
else
    echo "install.sh: the Python packages are installed, but the gallery test also needs Chromium" \
         "and chromedriver, and installing them needs root. Run" \
         "'sudo apt-get install -y chromium chromium-driver', or set VADER_CHROMIUM and" \
         "VADER_CHROMEDRIVER to a browser and driver you have (every other test runs without)." >&2
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "install.sh: no apt-get here; install Chromium and its chromedriver with your package" \
         "manager and set VADER_CHROMIUM and VADER_CHROMEDRIVER to them" >&2
    exit 0
fi
$sudo apt-get update
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends chromium chromium-driver
