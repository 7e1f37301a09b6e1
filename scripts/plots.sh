#!/usr/bin/env bash
# `dvc plots show` with vega, vega-lite and vega-embed served from disk instead of a CDN, so the
# page renders offline. The libraries come from the npm registry into .cache/vega (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="$PWD/.cache/vega"
if [[ ! -f "$dir/node_modules/vega-embed/build/vega-embed.min.js" ]]; then
  npm install --silent --no-audit --no-fund --prefix "$dir" vega@5 vega-lite@5 vega-embed@6 > /dev/null
fi
cat > "$dir/template.html" <<HTML
<!DOCTYPE html>
<html>
<head>
  <meta charset="utf-8">
  <title>classiflow plots</title>
  <script src="file://$dir/node_modules/vega/build/vega.min.js"></script>
  <script src="file://$dir/node_modules/vega-lite/build/vega-lite.min.js"></script>
  <script src="file://$dir/node_modules/vega-embed/build/vega-embed.min.js"></script>
</head>
<body>
{plot_divs}
</body>
</html>
HTML
dvc plots show --html-template "$dir/template.html" "$@"
