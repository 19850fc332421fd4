// Opens series of one study in OHIF Viewer (served by tests/viewers/ohif_server.py) in headless Debian
// chromium and reports what a radiologist would see. Usage: node ohif_check.mjs <request.json>:
//   {"base": url, "outDir": folder for screenshots and logs, "profileDir": a fresh folder, "chromium": path,
//    "concurrency": pages open at once,
//    "pages": [[{"name": str, "study": StudyInstanceUID, "series": SeriesInstanceUID, "panel": "seg" | "sr"}, ...]]}
// Prints one JSON report: per view, the page errors, the SEG segments (label, colour) or the SR
// measurements (label, values, whether placed on an image), the side panel's text, a screenshot path.
// One browser; each page opens its first view by URL and shows the next ones (other series of the
// same study) in the same viewport, as a radiologist would; pages open in parallel, a few at a time.
import fs from 'node:fs';
import path from 'node:path';
import { launchChromium } from './chromium.mjs';

const request = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const SETTLE_MS = 1500;
const WAIT_MS = 20000;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const browser = await launchChromium(request);

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
      uid: m.TrackingUniqueIdentifier ?? null,
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

// Inside the page: show another series of the loaded study in the active viewport, as a
// radiologist's double click on its thumbnail does.
function showSeries(seriesUid) {
  const s = window.services;
  const set = s.displaySetService.getActiveDisplaySets().find((d) => d.SeriesInstanceUID === seriesUid);
  if (!set) return false;
  s.viewportGridService.setDisplaySetsForViewport({
    viewportId: s.viewportGridService.getActiveViewportId(),
    displaySetInstanceUIDs: [set.displaySetInstanceUID],
  });
  return true;
}

function watch(page, sink) {
  page.on('pageerror', (e) => sink.errors.push(String(e?.stack ?? e)));
  page.on('console', async (msg) => {
    const text = msg.text();
    if (msg.type() === 'error' || msg.type() === 'warn' || msg.type() === 'warning') sink.console.push(`${msg.type()}: ${text}`);
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
      sink.errors.push(`${text}\n${stack}`.trim());
    }
  });
}

// Waits until the view's object is shown (SEG: every segment has its colour; SR: every
// measurement placed and the hydrated ones stopped arriving), opens its side panel, and reports.
async function inspect(page, view, sink, started) {
  const panelButton = view.panel === 'seg' ? 'panelSegmentation-btn' : 'trackedMeasurements-btn';
  let state = { ready: false };
  let tracked = -1;
  let trackedSince = Date.now();
  while (Date.now() - started < WAIT_MS) {
    state = await page.evaluate(pageState, view.panel, view.series);
    if (view.panel === 'sr' && state.tracked?.length !== tracked) {
      tracked = state.tracked?.length ?? -1;
      trackedSince = Date.now();
    }
    const done = view.panel === 'seg'
      ? state.segments?.length && state.segments.every((s) => s.color)
      : state.loaded && state.measurements.every((m) => m.placed) && tracked > 0 && Date.now() - trackedSince > SETTLE_MS;
    if (done || sink.errors.length) break;
    await sleep(250);
  }
  const button = await page.$(`[data-cy="${panelButton}"]`);
  const open = await page.$(view.panel === 'seg' ? '[data-cy="data-row"]' : '[data-cy="trackedMeasurements-panel"]');
  if (button && !open) {
    await button.click();
  }
  await sleep(SETTLE_MS);
  state = await page.evaluate(pageState, view.panel, view.series);
  const panelText = await page.evaluate((panel) => {
    const selector = panel === 'seg' ? '[data-cy="data-row"]' : '[data-cy="trackedMeasurements-panel"]';
    return [...document.querySelectorAll(selector)].map((e) => e.innerText).join('\n');
  }, view.panel);
  const screenshot = path.join(request.outDir, `${view.name}.png`);
  await page.screenshot({ path: screenshot });
  fs.writeFileSync(path.join(request.outDir, `${view.name}.console.txt`), sink.console.join('\n') + '\n');
  return { ...state, errors: [...sink.errors], panelText, screenshot, seconds: (Date.now() - started) / 1000 };
}

// One page per study and source: the first view by its URL, the next ones in the same page.
async function openPage(views) {
  const page = await browser.newPage();
  const sink = { errors: [], console: [] };
  watch(page, sink);
  // The onboarding tour would cover the viewport.
  await page.evaluateOnNewDocument(() => localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])));
  const results = {};
  for (const [index, view] of views.entries()) {
    const started = Date.now();
    sink.errors = [];
    sink.console = [];
    if (index === 0) {
      const url = `${request.base}/viewer?StudyInstanceUIDs=${view.study}&initialSeriesInstanceUID=${view.series}`;
      await page.goto(url, { waitUntil: 'networkidle0', timeout: 60000 });
    } else if (!(await page.evaluate(showSeries, view.series))) {
      sink.errors.push(`series ${view.series} is not in the study OHIF loaded`);
    }
    results[view.name] = await inspect(page, view, sink, started);
  }
  await page.close();
  return results;
}

const report = {};
try {
  const queue = [...request.pages];
  const worker = async () => {
    for (let views = queue.shift(); views; views = queue.shift()) {
      Object.assign(report, await openPage(views));
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, request.concurrency ?? 1) }, worker));
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(report) + '\n');
