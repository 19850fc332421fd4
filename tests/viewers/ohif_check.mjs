// Opens series of one study in OHIF Viewer (served by tests/viewers/ohif_server.py) in headless Debian
// chromium and reports what a radiologist would see. Usage: node ohif_check.mjs <request.json>:
//   {"base": url, "study": StudyInstanceUID, "outDir": folder for screenshots and logs, "profileDir": a fresh folder,
//    "chromium": path, "views": [{"name": str, "series": SeriesInstanceUID, "panel": "seg" | "sr"}]}
// Prints one JSON report: per view, the page errors, the SEG segments (label, colour) or the SR
// measurements (label, values, whether placed on an image), the side panel's text, a screenshot path.
import fs from 'node:fs';
import path from 'node:path';
import puppeteer from 'puppeteer-core';

const request = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const SETTLE_MS = 1500;
const WAIT_MS = 20000;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const browser = await puppeteer.launch({
  executablePath: request.chromium,
  headless: true,
  // No browser download, no network but loopback: Debian's chromium, as the CI rules ask. WebGL
  // through SwiftShader (software) since there is no GPU.
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    `--user-data-dir=${request.profileDir}`,
    '--use-angle=swiftshader', '--enable-unsafe-swiftshader',
  ],
  defaultViewport: { width: 1600, height: 1000 },
});

// Inside the page: OHIF's services (window.services) say what it loaded and how it shows it.
function pageState(panel, seriesUid) {
  const s = window.services;
  if (!s) return { ready: false };
  const sets = s.displaySetService.getActiveDisplaySets();
  const own = sets.find((d) => d.SeriesInstanceUID === seriesUid);
  const state = { ready: Boolean(own), loaded: Boolean(own?.isLoaded), modality: own?.Modality ?? null };
  if (panel === 'seg') {
    const viewportId = s.viewportGridService.getActiveViewportId();
    const seg = own && s.segmentationService.getSegmentation(own.displaySetInstanceUID);
    state.segments = seg
      ? Object.values(seg.segments ?? {}).filter(Boolean).map((segment) => {
          let color = null;
          try {
            color = Array.from(s.segmentationService.getSegmentColor(viewportId, seg.segmentationId, segment.segmentIndex) ?? []).slice(0, 3);
          } catch (e) {
            color = null;
          }
          return { index: segment.segmentIndex, label: segment.label, color };
        })
      : [];
  } else {
    state.measurements = (own?.measurements ?? []).map((m) => ({
      label: m.TrackingIdentifier ?? null,
      values: (m.labels ?? []).map((l) => `${l.label}: ${l.value}`),
      placed: m.loaded === true,
      graphicType: m.graphicType ?? m.coords?.[0]?.GraphicType ?? null,
    }));
    state.tracked = s.measurementService.getMeasurements().map((m) => ({
      label: m.label ?? null,
      displayText: m.displayText ?? null,
      referenceSeriesUID: m.referenceSeriesUID ?? null,
    }));
  }
  return state;
}

async function openView(view) {
  const page = await browser.newPage();
  const errors = [];
  const console_ = [];
  page.on('pageerror', (e) => errors.push(String(e?.stack ?? e)));
  page.on('console', async (msg) => {
    const text = msg.text();
    if (msg.type() === 'error' || msg.type() === 'warn' || msg.type() === 'warning') console_.push(`${msg.type()}: ${text}`);
    // OHIF's React error boundary catches a crashing route and logs it at debug level.
    if (/Error Boundary/.test(text)) {
      let stack = '';
      for (const arg of msg.args()) {
        try {
          stack = stack || (await arg.evaluate((e) => (e && e.stack) || ''));
        } catch (e) {
          // the page moved on
        }
      }
      errors.push(`${text}\n${stack}`.trim());
    }
  });
  // The onboarding tour would cover the viewport.
  await page.evaluateOnNewDocument(() => localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])));
  const url = `${request.base}/viewer?StudyInstanceUIDs=${request.study}&initialSeriesInstanceUID=${view.series}`;
  const started = Date.now();
  await page.goto(url, { waitUntil: 'networkidle0', timeout: 60000 });
  const panelButton = view.panel === 'seg' ? 'panelSegmentation-btn' : 'trackedMeasurements-btn';
  let state = { ready: false };
  while (Date.now() - started < WAIT_MS) {
    state = await page.evaluate(pageState, view.panel, view.series);
    const done = view.panel === 'seg'
      ? state.segments?.length && state.segments.every((s) => s.color)
      : state.loaded && state.measurements.every((m) => m.placed);
    if (done || errors.length) break;
    await sleep(250);
  }
  const button = await page.$(`[data-cy="${panelButton}"]`);
  if (button) {
    await button.click();
  }
  await sleep(SETTLE_MS);
  state = await page.evaluate(pageState, view.panel, view.series);
  const panelText = await page.evaluate((panel) => {
    const selector = panel === 'seg' ? '[data-cy="data-row"]' : '[data-cy="trackedMeasurements-panel"]';
    return [...document.querySelectorAll(selector)].map((e) => e.innerText).join('\n');
  }, view.panel);
  const rowColours = await page.evaluate(() =>
    [...document.querySelectorAll('[data-cy="data-row-colorhex"]')].map((e) => getComputedStyle(e).backgroundColor),
  );
  const screenshot = path.join(request.outDir, `${view.name}.png`);
  await page.screenshot({ path: screenshot });
  fs.writeFileSync(path.join(request.outDir, `${view.name}.console.txt`), console_.join('\n') + '\n');
  await page.close();
  return { ...state, errors, panelText, rowColours, screenshot, seconds: (Date.now() - started) / 1000 };
}

const report = {};
try {
  for (const view of request.views) {
    report[view.name] = await openView(view);
  }
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(report) + '\n');
