"""Debian's headless Chromium, as the dashboard's benchmark and the README's screenshots drive it (never a
browser Playwright downloads)."""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"
# Quiet and self-contained: no GPU, no first-run screens, no calls home while figures are taken.
HEADLESS_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
