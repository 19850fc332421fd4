// Opens the node's web dashboard (dicom_node/app/dashboard/) in headless Debian chromium as an
// operator does: logs in with the API token, reads the job list, filters it, waits for one live
// refresh, then opens a job's page with its previews. Usage: node dashboard_check.mjs <request.json>:
//   {"base": url of the node's HTTP API, "token": API token, "jobId": id, "outDir": folder for
//    screenshots, "profileDir": a fresh folder, "chromium": path}
// Prints one JSON report: page errors and console errors/warnings (a Content-Security-Policy
// violation is one), load times, rows shown before and after filtering, whether the list
// refreshed, the previews' decoded sizes, the legend swatches' colours, screenshot paths.
import fs from 'node:fs';
import path from 'node:path';
import { launchChromium } from './chromium.mjs';

const request = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const WAIT_MS = 20000;
const browser = await launchChromium(request);
const report = { errors: [], console: [] };
try {
  const page = await browser.newPage();
  page.on('pageerror', (err) => report.errors.push(String(err)));
  page.on('console', (msg) => {
    if (['error', 'warn', 'warning'].includes(msg.type())) report.console.push(`${msg.type()}: ${msg.text()}`);
  });
  const loadSeconds = () => page.evaluate(() => {
    const nav = performance.getEntriesByType('navigation')[0];
    return nav ? nav.loadEventEnd / 1000 : null;
  });

  await page.goto(`${request.base}/ui/login`, { waitUntil: 'load' });
  await page.type('input[name=token]', request.token);
  await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.click('button[type=submit]')]);
  report.overviewUrl = page.url();
  report.overviewSeconds = await loadSeconds();
  const visible = () => page.$$eval('#jobs tr[data-state]', (rows) => rows.filter((r) => !r.hidden).length);
  report.rows = await visible();
  await page.select('#filter-state', 'done');
  report.rowsDone = await visible();
  await page.type('#filter-text', 'no-such-job-anywhere');
  report.rowsNonsense = await visible();
  await page.$eval('#filter-text', (el) => { el.value = ''; el.dispatchEvent(new Event('input')); });
  report.rowsCleared = await visible();
  // The list refreshes itself from /ui/fragment/jobs (fetch under the page's CSP).
  await page.waitForFunction(() => document.getElementById('refreshed').textContent !== '', { timeout: WAIT_MS });
  report.refreshed = await page.$eval('#refreshed', (el) => el.textContent);
  report.rowsAfterRefresh = await visible();
  report.overviewScreenshot = path.join(request.outDir, 'overview.png');
  await page.screenshot({ path: report.overviewScreenshot, fullPage: true });

  const started = Date.now();
  await page.goto(`${request.base}/ui/jobs/${request.jobId}`, { waitUntil: 'load' });
  report.jobWallSeconds = (Date.now() - started) / 1000;
  report.jobSeconds = await loadSeconds();
  report.previews = await page.$$eval('.previews img', (imgs) => imgs.map((img) => ({
    src: img.getAttribute('src'), complete: img.complete, width: img.naturalWidth, height: img.naturalHeight,
  })));
  report.swatches = await page.$$eval('.swatch', (els) => els.map((el) => ({
    rgb: el.dataset.rgb, background: getComputedStyle(el).backgroundColor,
  })));
  report.headings = await page.$$eval('h2', (els) => els.map((el) => el.textContent));
  report.jobScreenshot = path.join(request.outDir, 'job.png');
  await page.screenshot({ path: report.jobScreenshot, fullPage: true });
} catch (err) {
  report.errors.push(`check: ${err}`);
} finally {
  await browser.close();
}
fs.writeFileSync(path.join(request.outDir, 'console.txt'), report.console.join('\n') + '\n');
console.log(JSON.stringify(report));
