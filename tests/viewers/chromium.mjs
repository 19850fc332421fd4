// The one launcher of Debian's chromium for the browser tests (ohif_check.mjs, dashboard_check.mjs):
// headless, driven by puppeteer-core, no browser download, no network but loopback, as the CI
// rules ask. WebGL through SwiftShader (software) since there is no GPU.
import puppeteer from 'puppeteer-core';

export function launchChromium({ chromium, profileDir }) {
  return puppeteer.launch({
    executablePath: chromium,
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      `--user-data-dir=${profileDir}`,
      '--use-angle=swiftshader', '--enable-unsafe-swiftshader',
    ],
    defaultViewport: { width: 1280, height: 800 },
  });
}
