"""The web console's files (static/: HTML, CSS, JavaScript modules, vendored uPlot), served
by `blockstore serve` at /console/ (api/routes/console.py); no build step."""
