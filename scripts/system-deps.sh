#!/bin/sh
# Install the Debian packages lepton_nb uses, where they are missing and this user may install them.
#   dataset-fashion-mnist  the default data set, for machines without internet (files in /usr/share/datasets)
#   chromium               the headless browser of the docs-site and JupyterLab tests
#   npm                    fetches KaTeX and mermaid for the docs site (once, into .cache/docs-vendor/)
# Elsewhere it only says what is missing: the data can also come from a torchvision download.
set -u
want=""
[ -d /usr/share/datasets/fashion-mnist ] || want="$want dataset-fashion-mnist"
command -v chromium >/dev/null 2>&1 || want="$want chromium"
command -v npm >/dev/null 2>&1 || want="$want npm"
[ -z "$want" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages:$want"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null 2>&1 || true
  for p in $want; do apt-get install -y -q "$p" >/dev/null 2>&1 || echo "could not install $p (not fatal)"; done
else
  echo "note: Debian packages not installed:$want (install them with: sudo apt-get install$want)"
fi
exit 0
