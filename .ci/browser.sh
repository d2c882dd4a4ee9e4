# Sourced by .ci/run before the README's two commands: the dashboard's browser tests
# (tests/web/test_browser.py) need Debian's chromium and chromedriver, which pip cannot provide.
# As root, missing ones are installed quietly; once both are there, ORCHESTRA_REQUIRE_BROWSER=1 makes a
# browser that cannot start fail those tests instead of skipping them. An install that fails (no
# network, not Debian, not root) prints one line and CI goes on: the browser tests skip, saying why.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 &&
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
            >/tmp/orchestra-ci-chromium.log 2>&1; then
        echo ".ci/browser.sh: installed chromium and chromium-driver for the browser tests"
    else
        echo ".ci/browser.sh: could not install chromium + chromium-driver (see /tmp/orchestra-ci-chromium.log if present); the browser tests will skip" >&2
    fi
fi
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    export ORCHESTRA_REQUIRE_BROWSER=1
fi
